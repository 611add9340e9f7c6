-- Engineered behavioural features. Reads no target column (engagement_score, churn_30_day,
-- lifetime_value_usd, content_category_primary): a test checks that with column-level lineage.
with customers as (
    select * from {{ ref('stg_customers') }}
)

select
    customer_id,
    snapshot_week,
    -- demographics kept for fairness reporting, not as model inputs
    gender,
    case
        when age < 25 then '18-24'
        when age < 35 then '25-34'
        when age < 45 then '35-44'
        when age < 55 then '45-54'
        else '55+'
    end as age_band,
    -- tenure and recency
    tenure_months,
    case when tenure_months <= 3 then 1 else 0 end as is_new_customer,
    coalesce({{ dbt.datediff('last_active_date', 'snapshot_week', 'day') }}, -1) as days_since_last_active,
    -- activity intensity
    sessions_last_7_days,
    session_duration_avg_minutes,
    {{ log1p('sessions_last_7_days * session_duration_avg_minutes') }} as log_weekly_minutes,
    session_consistency_score,
    last_7_day_engagement_trend,
    response_time_avg_hours,
    {{ log1p('response_time_avg_hours') }} as log_response_time_hours,
    peak_activity_hour,
    -- dating
    swipes_right_last_30_days,
    {{ smoothed_ratio('matches_last_30_days + 1', 'swipes_right_last_30_days', 2.0) }} as match_rate_smoothed,
    -- social graph and content
    {{ log1p('total_connections') }} as log_total_connections,
    {{ smoothed_ratio('connections_received', 'connections_sent') }} as connection_reciprocity,
    {{ log1p('followers_count') }} as log_followers,
    {{ log1p('following_count') }} as log_following,
    {{ smoothed_ratio('followers_count', 'following_count') }} as follower_following_ratio,
    {{ log1p('profile_views_received') }} as log_profile_views,
    posts_last_30_days,
    stories_last_30_days,
    content_virality_score,
    content_diversity_score,
    influence_score,
    network_centrality,
    case social_influence_tier
        when 'Nano' then 0 when 'Micro' then 1 when 'Mid' then 2 when 'Macro' then 3 else 4
    end as influence_tier_rank,
    referral_count,
    -- gig marketplace and commerce
    gig_applications_sent,
    {{ smoothed_ratio('gig_applications_received', 'gig_applications_sent') }} as gig_demand_ratio,
    active_gigs_count,
    {{ log1p('transaction_revenue_last_90_days') }} as log_revenue_90d,
    case when time_since_first_transaction_days >= 0 then 1 else 0 end as has_transacted,
    avg_job_completion_rating,
    premium_features_used_count,
    -- trust and sentiment
    trust_score,
    risk_score,
    avg_sentiment_score,
    -- categorical
    location,
    coalesce(platform, 'unknown') as platform,
    coalesce(acquisition_channel, 'unknown') as acquisition_channel
from customers
