//! The demo's picture of an outage: throughput, p99, errors, breaker state, fallback mode and
//! pending writes over time, with the kill and the restart marked (SVG, by plotters).

use std::path::Path;

use plotters::prelude::*;

/// The state of things over one sampling interval.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Sample {
    /// Seconds since the start.
    pub(crate) t: f64,
    /// Operations per second over the interval.
    pub(crate) ops: f64,
    /// Failed operations per second over the interval.
    pub(crate) errors: f64,
    /// p99 latency over the interval, milliseconds.
    pub(crate) p99_ms: f64,
    /// 0 closed, 1 half-open, 2 open (forced open counts as open).
    pub(crate) breaker: u8,
    /// In fallback mode.
    pub(crate) fallback: bool,
    /// Journaled writes waiting for replay.
    pub(crate) pending: u64,
}

/// Samples and the moments Redis was killed and restarted.
#[derive(Clone, Debug, Default)]
pub(crate) struct Timeline {
    pub(crate) samples: Vec<Sample>,
    pub(crate) kill: Option<f64>,
    pub(crate) restart: Option<f64>,
}

/// One panel: its title, the top of its y axis, and its lines (label, colour, points).
type Panel<'a> = (&'a str, f64, Vec<(&'a str, RGBColor, Vec<(f64, f64)>)>);

/// Draws `timeline` into an SVG file at `path`.
pub(crate) fn draw(timeline: &Timeline, path: &Path) -> Result<(), String> {
    let e = |e: &dyn std::fmt::Display| format!("cannot draw {}: {e}", path.display());
    let root = SVGBackend::new(path, (1000, 1000)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let root = root
        .titled("resilient-redis through a Redis outage", ("sans-serif", 22))
        .map_err(|x| e(&x))?;
    let panels = root.split_evenly((5, 1));
    let s = &timeline.samples;
    let t_max = s.last().map_or(1.0, |x| x.t).max(1.0);
    let max = |f: &dyn Fn(&Sample) -> f64| s.iter().map(f).fold(0.0f64, f64::max);

    let series: [Panel<'_>; 5] = [
        (
            "operations per second",
            max(&|x| x.ops.max(x.errors)) * 1.1 + 1.0,
            vec![
                ("ops/s", BLUE, s.iter().map(|x| (x.t, x.ops)).collect()),
                ("errors/s", RED, s.iter().map(|x| (x.t, x.errors)).collect()),
            ],
        ),
        (
            "p99 latency (ms)",
            max(&|x| x.p99_ms) * 1.1 + 0.1,
            vec![("p99", MAGENTA, s.iter().map(|x| (x.t, x.p99_ms)).collect())],
        ),
        (
            "breaker: 0 closed, 1 half-open, 2 open",
            2.3,
            vec![(
                "breaker",
                RGBColor(200, 120, 0),
                steps(s, |x| f64::from(x.breaker)),
            )],
        ),
        (
            "fallback mode: 1 on",
            1.2,
            vec![(
                "fallback",
                RGBColor(0, 140, 70),
                steps(s, |x| f64::from(u8::from(x.fallback))),
            )],
        ),
        (
            "journaled writes pending",
            max(&|x| x.pending as f64) * 1.1 + 1.0,
            vec![(
                "pending",
                RGBColor(90, 90, 90),
                s.iter().map(|x| (x.t, x.pending as f64)).collect(),
            )],
        ),
    ];
    for (area, (title, y_max, lines)) in panels.iter().zip(series) {
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 15))
            .margin(6)
            .x_label_area_size(22)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..t_max, 0.0..y_max)
            .map_err(|x| e(&x))?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .y_labels(5)
            .draw()
            .map_err(|x| e(&x))?;
        for (label, color, points) in lines {
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))
                .map_err(|x| e(&x))?
                .label(label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
        }
        for (at, label, color) in [
            (timeline.kill, "Redis killed", RED),
            (timeline.restart, "Redis restarted", GREEN),
        ] {
            if let Some(at) = at {
                chart
                    .draw_series(LineSeries::new(
                        vec![(at, 0.0), (at, y_max)],
                        color.mix(0.6).stroke_width(1),
                    ))
                    .map_err(|x| e(&x))?
                    .label(label)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
            }
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK.mix(0.3))
            .draw()
            .map_err(|x| e(&x))?;
    }
    root.present().map_err(|x| e(&x))
}

/// A value that holds until the next sample, as a step line.
fn steps(s: &[Sample], f: impl Fn(&Sample) -> f64) -> Vec<(f64, f64)> {
    let mut out = Vec::with_capacity(s.len() * 2);
    for pair in s.windows(2) {
        out.push((pair[0].t, f(&pair[0])));
        out.push((pair[1].t, f(&pair[0])));
    }
    if let Some(last) = s.last() {
        out.push((last.t, f(last)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The picture of a made-up outage is an SVG document with the five panels, a line per
    /// series and the kill and restart marked.
    #[test]
    fn an_outage_is_drawn_as_svg() {
        let samples: Vec<Sample> = (0..40)
            .map(|i| {
                let t = f64::from(i) * 0.25;
                let down = (3.0..5.5).contains(&t);
                Sample {
                    t,
                    ops: if down { 900.0 } else { 1000.0 },
                    errors: if down { 5.0 } else { 0.0 },
                    p99_ms: if down { 250.0 } else { 1.5 },
                    breaker: if down { 2 } else { 0 },
                    fallback: down,
                    pending: if down { (t * 100.0) as u64 } else { 0 },
                }
            })
            .collect();
        let timeline = Timeline {
            samples,
            kill: Some(3.0),
            restart: Some(5.5),
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outage.svg");
        draw(&timeline, &path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let doc = roxmltree::Document::parse(&text).expect("well-formed SVG");
        assert_eq!(doc.root_element().tag_name().name(), "svg");
        let texts: Vec<String> = doc
            .descendants()
            .filter(|n| n.has_tag_name("text"))
            .filter_map(|n| n.text().map(|t| t.trim().to_owned()))
            .collect();
        for want in [
            "operations per second",
            "p99 latency (ms)",
            "journaled writes pending",
            "Redis killed",
            "Redis restarted",
            "errors/s",
        ] {
            assert!(texts.iter().any(|t| t == want), "no `{want}` in {texts:?}");
        }
        let lines = doc
            .descendants()
            .filter(|n| n.has_tag_name("polyline"))
            .count();
        // Six series and two markers in each of five panels, at least.
        assert!(lines >= 6 + 10, "{lines} lines");
    }
}
