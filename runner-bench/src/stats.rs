//! Figures: samples summarised as median and p95, with the baseline measured
//! in the same run.

use std::future::Future;
use std::time::Instant;

use serde::Serialize;

/// Whether a smaller or a larger value is better for a figure's unit.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Better {
    Lower,
    Higher,
}

/// One line of the results: our figure next to its baseline.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Figure {
    pub(crate) group: String,
    pub(crate) name: String,
    pub(crate) unit: String,
    pub(crate) better: Better,
    pub(crate) samples: usize,
    pub(crate) median: f64,
    pub(crate) p95: f64,
    pub(crate) baseline: String,
    pub(crate) baseline_median: f64,
    pub(crate) baseline_p95: f64,
    /// `median / baseline_median`.
    pub(crate) ratio: f64,
    /// Errors seen while measuring (concurrency figures); must be zero.
    pub(crate) errors: u64,
    /// The bound a figure is held to (peak RSS of a streamed transfer), when
    /// it has one; it also stands in the baseline columns.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) bound: Option<f64>,
    /// Whether every sample is within [`bound`](Self::bound).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) within_bound: Option<bool>,
}

impl Figure {
    /// The verdict against the bound, for the table: empty without one.
    pub(crate) fn verdict(&self) -> String {
        match (self.bound, self.within_bound) {
            (Some(bound), Some(true)) => format!("ok (<= {bound})"),
            (Some(bound), Some(false)) => format!("OVER (> {bound})"),
            _ => String::new(),
        }
    }
}

/// Samples of one measurement.
#[derive(Debug, Clone, Default)]
pub(crate) struct Samples(pub(crate) Vec<f64>);

impl Samples {
    pub(crate) fn push(&mut self, value: f64) {
        self.0.push(value);
    }

    /// The value at quantile `q` (nearest rank).
    pub(crate) fn quantile(&self, q: f64) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        let mut sorted = self.0.clone();
        sorted.sort_by(f64::total_cmp);
        let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        sorted[rank - 1]
    }

    pub(crate) fn median(&self) -> f64 {
        self.quantile(0.5)
    }

    pub(crate) fn p95(&self) -> f64 {
        self.quantile(0.95)
    }

    /// The largest sample (`NaN` without one).
    pub(crate) fn max(&self) -> f64 {
        self.quantile(1.0)
    }
}

/// Builds figures of one group.
pub(crate) struct Group {
    name: String,
    figures: Vec<Figure>,
}

/// What a figure measures and against what.
pub(crate) struct Spec<'a> {
    pub(crate) name: &'a str,
    pub(crate) unit: &'a str,
    pub(crate) better: Better,
    pub(crate) baseline: &'a str,
}

impl Group {
    pub(crate) fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            figures: Vec::new(),
        }
    }

    /// Records a figure from our samples and the baseline's.
    pub(crate) fn add(&mut self, spec: Spec<'_>, ours: &Samples, baseline: &Samples, errors: u64) {
        let figure = Figure {
            group: self.name.clone(),
            name: spec.name.to_string(),
            unit: spec.unit.to_string(),
            better: spec.better,
            samples: ours.0.len(),
            median: ours.median(),
            p95: ours.p95(),
            baseline: spec.baseline.to_string(),
            baseline_median: baseline.median(),
            baseline_p95: baseline.p95(),
            ratio: ours.median() / baseline.median(),
            errors,
            bound: None,
            within_bound: None,
        };
        self.push(figure);
    }

    /// Records a figure held to `bound` instead of a measured baseline: the
    /// bound stands in the baseline columns (so `ratio` is the median's share
    /// of it) and the verdict says whether every sample is within it.
    pub(crate) fn add_bounded(&mut self, spec: Spec<'_>, ours: &Samples, bound: f64) {
        let bound_samples = Samples(vec![bound]);
        self.add(spec, ours, &bound_samples, 0);
        if let Some(figure) = self.figures.last_mut() {
            figure.bound = Some(bound);
            figure.within_bound = Some(!ours.0.is_empty() && ours.max() <= bound);
            eprintln!("    verdict: {}", figure.verdict());
        }
    }

    fn push(&mut self, figure: Figure) {
        eprintln!(
            "  {:<44} {:>10.2} {:<5} (baseline {:.2}, ratio {:.2})",
            figure.name, figure.median, figure.unit, figure.baseline_median, figure.ratio
        );
        self.figures.push(figure);
    }

    /// Records throughput figures (MiB/s) of transfers of `bytes` each, from
    /// `(name, our durations, baseline durations, baseline)` in milliseconds.
    pub(crate) fn add_transfers(
        &mut self,
        bytes: u64,
        rows: [(&str, &Samples, &Samples, &str); 2],
    ) {
        for (name, ours, base, baseline) in rows {
            self.add(
                Spec {
                    name,
                    unit: "MiB/s",
                    better: Better::Higher,
                    baseline,
                },
                &throughput_mib_s(ours, bytes),
                &throughput_mib_s(base, bytes),
                0,
            );
        }
    }

    pub(crate) fn into_figures(self) -> Vec<Figure> {
        self.figures
    }
}

/// The names of the figures over their bound (a run with any fails).
pub(crate) fn over_bound(figures: &[Figure]) -> Vec<&str> {
    figures
        .iter()
        .filter(|f| f.within_bound == Some(false))
        .map(|f| f.name.as_str())
        .collect()
}

/// Runs `op` `n` times one after another and returns the wall time of each
/// run in milliseconds. The first error stops the measurement.
pub(crate) async fn time_ms<F, Fut>(n: usize, mut op: F) -> anyhow::Result<Samples>
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let mut samples = Samples::default();
    for i in 0..n {
        let start = Instant::now();
        op(i).await?;
        samples.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(samples)
}

/// Like [`time_ms`], with an untimed `prepare` before each run whose value
/// `op` takes (the request a caller already holds, such as a write's bytes).
pub(crate) async fn time_ms_prepared<T, P, F, Fut>(
    n: usize,
    mut prepare: P,
    mut op: F,
) -> anyhow::Result<Samples>
where
    P: FnMut() -> T,
    F: FnMut(T) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let mut samples = Samples::default();
    for _ in 0..n {
        let input = prepare();
        let start = Instant::now();
        op(input).await?;
        samples.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(samples)
}

/// Converts durations in milliseconds of transfers of `bytes` into MiB/s.
pub(crate) fn throughput_mib_s(durations_ms: &Samples, bytes: u64) -> Samples {
    let mib = bytes as f64 / (1024.0 * 1024.0);
    Samples(
        durations_ms
            .0
            .iter()
            .map(|ms| mib / (ms / 1000.0))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::{Better, Group, Samples, Spec, over_bound};

    #[test]
    fn quantiles_use_the_nearest_rank() {
        let samples = Samples((1..=100).map(f64::from).collect());
        assert_eq!(samples.median(), 50.0);
        assert_eq!(samples.p95(), 95.0);
        assert_eq!(Samples(vec![3.0]).p95(), 3.0);
        assert!(Samples::default().median().is_nan());
        assert_eq!(Samples(vec![2.0, 9.0, 4.0]).max(), 9.0);
    }

    fn rss_spec(name: &str) -> Spec<'_> {
        Spec {
            name,
            unit: "MiB",
            better: Better::Lower,
            baseline: "the bound",
        }
    }

    #[test]
    fn a_bounded_figure_is_within_only_when_every_sample_is() {
        let mut group = Group::new("streams");
        group.add_bounded(rss_spec("within"), &Samples(vec![10.0, 64.0]), 64.0);
        group.add_bounded(rss_spec("one over"), &Samples(vec![10.0, 64.5]), 64.0);
        group.add_bounded(rss_spec("no samples"), &Samples::default(), 64.0);
        let figures = group.into_figures();
        let verdicts: Vec<_> = figures.iter().map(|f| f.within_bound).collect();
        assert_eq!(verdicts, [Some(true), Some(false), Some(false)]);
        assert_eq!(figures[0].verdict(), "ok (<= 64)");
        assert_eq!(figures[1].verdict(), "OVER (> 64)");
        assert_eq!(figures[0].baseline_median, 64.0);
        assert_eq!(figures[0].ratio, 10.0 / 64.0);
        assert_eq!(over_bound(&figures), ["one over", "no samples"]);
    }

    #[test]
    fn a_measured_figure_has_no_verdict() {
        let mut group = Group::new("g");
        group.add(rss_spec("f"), &Samples(vec![1.0]), &Samples(vec![2.0]), 0);
        let figure = &group.into_figures()[0];
        assert_eq!((figure.bound, figure.within_bound), (None, None));
        assert_eq!(figure.verdict(), "");
    }
}
