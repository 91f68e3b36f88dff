//! Stacked bar charts as inline SVG, drawn on the server: one bar per day, one colour per
//! series (model or key). No script and no style attribute (the CSP allows neither inline):
//! colours come from the stylesheet's `s0`..`s7` classes, and each bar segment carries a
//! `<title>` that browsers show on hover. Every SVG element is closed explicitly: HTML's
//! void-element shorthand (`<line ...>`) would leave it open inside `<svg>`. Each day's group also carries `data-day` and
//! `data-total`, which the browser tests read.

use maud::{Markup, html};

/// One stacked series: a label and one value per day.
pub(crate) struct Series {
    pub label: String,
    pub values: Vec<u64>,
}

/// How a chart writes its values: exactly (titles, `data-total`) and briefly (axis).
pub(crate) struct Units {
    pub exact: fn(u64) -> String,
    pub axis: fn(u64) -> String,
}

const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 220.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 8.0;
const TOP: f64 = 10.0;
const BOTTOM: f64 = 24.0;

/// The smallest 1, 2 or 5 × 10^k at or above `n` (at least 1): the axis' top.
fn nice_ceiling(n: u64) -> u64 {
    let mut unit = 1u64;
    loop {
        for step in [1u64, 2, 5] {
            let candidate = step.saturating_mul(unit);
            if candidate >= n || candidate == u64::MAX {
                return candidate.max(1);
            }
        }
        unit = unit.saturating_mul(10);
    }
}

fn px(value: f64) -> String {
    format!("{value:.1}")
}

/// One day's bar: its segments (series index, value) bottom up, and its total.
struct Bar {
    segments: Vec<(usize, u64)>,
    total: u64,
}

/// A stacked bar chart of `series` over `days` (labels `YYYY-MM-DD`).
pub(crate) fn stacked(
    id: &str,
    caption: &str,
    days: &[String],
    series: &[Series],
    units: &Units,
) -> Markup {
    let bars: Vec<Bar> = (0..days.len())
        .map(|d| {
            let segments: Vec<(usize, u64)> = series
                .iter()
                .enumerate()
                .map(|(i, s)| (i, s.values.get(d).copied().unwrap_or(0)))
                .filter(|(_, v)| *v > 0)
                .collect();
            let total = segments.iter().map(|(_, v)| v).sum();
            Bar { segments, total }
        })
        .collect();
    let top = nice_ceiling(bars.iter().map(|b| b.total).max().unwrap_or(0));
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let slot = plot_w / days.len().max(1) as f64;
    let bar_w = (slot * 0.72).max(1.0);
    let y_of = |v: u64| TOP + plot_h - plot_h * (v as f64 / top as f64);
    let last = days.len();
    html! {
        figure.chart {
            figcaption { (caption) }
            svg #(id) viewBox={"0 0 " (WIDTH) " " (HEIGHT)} role="img" aria-label=(caption) {
                @for tick in [0, top / 2, top] {
                    line.grid x1=(px(LEFT)) x2=(px(WIDTH - RIGHT)) y1=(px(y_of(tick))) y2=(px(y_of(tick))) {}
                    text.axis x=(px(LEFT - 6.0)) y=(px(y_of(tick) + 4.0)) text-anchor="end" { ((units.axis)(tick)) }
                }
                @for (d, (day, bar)) in days.iter().zip(&bars).enumerate() {
                    @let x = LEFT + slot * d as f64 + (slot - bar_w) / 2.0;
                    g.day data-day=(day) data-total=((units.exact)(bar.total)) {
                        @for (k, (i, v)) in bar.segments.iter().enumerate() {
                            @let below: u64 = bar.segments[..k].iter().map(|(_, v)| v).sum();
                            rect class={"s" (i % 8)} x=(px(x)) y=(px(y_of(below + v))) width=(px(bar_w))
                                height=(px((y_of(below) - y_of(below + v)).max(0.5))) {
                                title { (day) " · " (series[*i].label) ": " ((units.exact)(*v)) }
                            }
                        }
                    }
                    @if d == 0 || (d + 1) % 5 == 0 || d + 1 == last {
                        text.axis x=(px(LEFT + slot * d as f64 + slot / 2.0)) y=(px(HEIGHT - 6.0)) text-anchor="middle" { (d + 1) }
                    }
                }
            }
        }
    }
}

/// The legend for charts drawn with `series` (same order, same colours).
pub(crate) fn legend(series: &[Series], detail: &[String]) -> Markup {
    html! {
        ul.legend {
            @for (i, s) in series.iter().enumerate() {
                li {
                    svg.swatch viewBox="0 0 10 10" aria-hidden="true" { rect class={"s" (i % 8)} width="10" height="10" {} }
                    " " span.series-label { (s.label) }
                    @if let Some(d) = detail.get(i) { " " span.sub { (d) } }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_tops_are_round() {
        assert_eq!(nice_ceiling(0), 1);
        assert_eq!(nice_ceiling(1), 1);
        assert_eq!(nice_ceiling(3), 5);
        assert_eq!(nice_ceiling(11), 20);
        assert_eq!(nice_ceiling(1_350), 2_000);
        assert_eq!(nice_ceiling(5_000_001), 10_000_000);
        assert_eq!(nice_ceiling(u64::MAX), u64::MAX);
    }

    #[test]
    fn bars_stack_and_carry_their_totals() {
        let days = vec!["2026-12-01".to_owned(), "2026-12-02".to_owned()];
        let series = vec![
            Series {
                label: "a<b>".into(),
                values: vec![1, 0],
            },
            Series {
                label: "c".into(),
                values: vec![2, 5],
            },
        ];
        let units = Units {
            exact: |v| v.to_string(),
            axis: |v| v.to_string(),
        };
        let svg = stacked("cost", "Cost", &days, &series, &units).into_string();
        assert!(
            svg.contains(r#"data-day="2026-12-01" data-total="3""#),
            "{svg}"
        );
        assert!(
            svg.contains(r#"data-day="2026-12-02" data-total="5""#),
            "{svg}"
        );
        assert_eq!(svg.matches("<rect").count(), 3, "no rect for a zero value");
        assert!(svg.contains("a&lt;b&gt;"), "labels are escaped");
        assert!(!svg.contains("style="), "no inline style (CSP)");
        assert_eq!(
            svg.matches("<line").count(),
            svg.matches("</line>").count(),
            "closed"
        );
        assert_eq!(
            svg.matches("<rect").count(),
            svg.matches("</rect>").count(),
            "closed"
        );
    }
}
