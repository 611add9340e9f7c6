output "sns_topic_arn" {
  value = aws_sns_topic.failures.arn
}

output "state_machine_arn" {
  value = aws_sfn_state_machine.weekly_refresh.arn
}

output "state_machine_name" {
  value = aws_sfn_state_machine.weekly_refresh.name
}

output "schedule_rule_name" {
  value = aws_cloudwatch_event_rule.weekly.name
}
