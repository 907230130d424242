//! Helpers for metrics with fixed label sets. Every label value a family
//! can have is created when the family is registered, so each series is
//! there (at 0) from the first scrape — Prometheus's `rate()` and alerts
//! need no special case for a series that appears late — and the code that
//! counts holds the series' handle and increments an atomic, with no label
//! lookup on its path. Label values come from fixed lists in the code, never
//! from peer input (no addresses, no ids), so the label sets stay bounded.

use std::fmt::Debug;
use std::hash::Hash;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Label set of a series with one label.
pub type Label = [(&'static str, &'static str); 1];

/// Label set of a series with two labels.
pub type Labels2 = [(&'static str, &'static str); 2];

/// Registers counter family `name` with one series per label set in
/// `series` (the prefix and `_total` are added by the registry), and returns
/// their handles in the same order.
pub fn counters<L>(registry: &mut Registry, name: &str, help: &str, series: &[L]) -> Vec<Counter>
where
    L: EncodeLabelSet + Clone + Hash + Eq + Debug + Send + Sync + 'static,
{
    let family = Family::<L, Counter>::default();
    registry.register(name, help, family.clone());
    series.iter().map(|labels| family.get_or_create(labels).clone()).collect()
}

/// [`counters`] for gauges.
pub fn gauges<L>(registry: &mut Registry, name: &str, help: &str, series: &[L]) -> Vec<Gauge>
where
    L: EncodeLabelSet + Clone + Hash + Eq + Debug + Send + Sync + 'static,
{
    let family = Family::<L, Gauge>::default();
    registry.register(name, help, family.clone());
    series.iter().map(|labels| family.get_or_create(labels).clone()).collect()
}

/// One single-label series per value of `values`.
pub fn label_values<const N: usize>(key: &'static str, values: [&'static str; N]) -> [Label; N] {
    values.map(|v| [(key, v)])
}

/// Adds a [`std::time::Duration`] to a histogram, in seconds.
pub fn observe_seconds(histogram: &prometheus_client::metrics::histogram::Histogram, d: std::time::Duration) {
    histogram.observe(d.as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_shows_from_the_start_and_counts_through_its_handle() {
        let mut registry = Registry::with_prefix("septet_test");
        let by_kind = counters(&mut registry, "things", "Things", &label_values("kind", ["a", "b"]));
        let pairs: [Labels2; 2] = [[("x", "1"), ("y", "2")], [("x", "3"), ("y", "4")]];
        let g = gauges(&mut registry, "levels", "Levels", &pairs);
        by_kind[1].inc_by(3);
        g[0].set(-2);
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).unwrap();
        for line in [
            "septet_test_things_total{kind=\"a\"} 0",
            "septet_test_things_total{kind=\"b\"} 3",
            "septet_test_levels{x=\"1\",y=\"2\"} -2",
            "septet_test_levels{x=\"3\",y=\"4\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing from\n{text}");
        }
    }
}
