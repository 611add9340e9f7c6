"""Exports of the asset graph to other orchestrators: `step_functions` writes the weekly refresh as an
AWS Step Functions state machine (Amazon States Language) and its EventBridge schedule."""
