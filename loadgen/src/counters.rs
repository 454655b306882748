//! The service's counters of `/metrics` that explain a phase.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::Api;

/// Selected counters of `/metrics`: deliveries by outcome, sweeper cancels, retries,
/// consumer batches and the time spent handling them.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counters(pub BTreeMap<String, f64>);

impl Counters {
    /// The counters of the service `api` calls; empty when it does not answer.
    pub async fn read(api: &Api) -> Self {
        match api.metrics_text().await {
            Ok(text) => Self::parse(&text),
            Err(_) => Self::default(),
        }
    }

    /// The counters of a `/metrics` page.
    pub fn parse(text: &str) -> Self {
        let mut counters = BTreeMap::new();
        for line in text.lines().filter(|line| !line.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let name = series.split('{').next().unwrap_or(series);
            let key = match name {
                "order_timeout_deliveries_total" => match label(series, "outcome") {
                    Some(outcome) => format!("deliveries_{outcome}"),
                    None => continue,
                },
                "order_timeout_swept_total" => "swept".into(),
                "order_timeout_retries_total" => "retries".into(),
                "order_timeout_failed_messages_total" => "failed_messages".into(),
                "order_timeout_outbox_published_total" => "outbox_published".into(),
                "order_timeout_handler_seconds_count" => "consumer_batches".into(),
                "order_timeout_handler_seconds_sum" => "consumer_batch_seconds".into(),
                _ => continue,
            };
            *counters.entry(key).or_insert(0.0) += value;
        }
        Self(counters)
    }

    /// Entities the service cancelled for their timeout: through a timer or the sweeper.
    pub fn cancelled_for_timeout(&self) -> f64 {
        let get = |key: &str| self.0.get(key).copied().unwrap_or(0.0);
        get("deliveries_cancelled") + get("swept")
    }

    /// What happened since `before` (the in-process recorder outlives a service).
    pub fn since(mut self, before: &Counters) -> Self {
        for (key, value) in &mut self.0 {
            *value -= before.0.get(key).copied().unwrap_or(0.0);
        }
        self
    }
}

fn label<'a>(series: &'a str, name: &str) -> Option<&'a str> {
    let labels = series.split_once('{')?.1.trim_end_matches('}');
    labels.split(',').find_map(|pair| {
        pair.strip_prefix(name)?
            .strip_prefix("=\"")?
            .strip_suffix('"')
    })
}
