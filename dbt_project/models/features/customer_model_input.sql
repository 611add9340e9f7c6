-- Model-ready rows: features, targets and a split that is stable across weeks (a hash of
-- customer_id, so a customer stays in one fold forever). Column roles live in the YAML `meta`.
select
    f.*,
    c.engagement_score,
    c.churn_30_day,
    c.lifetime_value_usd,
    c.content_category_primary,
    case
        when {{ hash_bucket('f.customer_id', 100) }} < 70 then 'train'
        when {{ hash_bucket('f.customer_id', 100) }} < 85 then 'valid'
        else 'test'
    end as split,
    -- The same hash whole: capped training samples (the smallest hashes first) and scoring shards
    -- (ranges of hashes) are then functions of the customer alone, whatever the week.
    {{ hash_bucket('f.customer_id', 4294967296) }} as customer_hash
from {{ ref('customer_features') }} as f
inner join {{ ref('stg_customers') }} as c
    on f.customer_id = c.customer_id
-- Stored in hash order: a scoring shard (a range of hashes) then reads only its own row groups.
order by customer_hash
