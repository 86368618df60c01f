//! Line charts as inline SVG, drawn on the server: no script, no image request. Each chart is
//! a `figure` whose caption says in words what the line shows (latest value, lowest, highest,
//! the time span), so a screen reader gets the figures without the drawing.

use maud::{Markup, html};

/// Width and height of the drawing, in its own units (CSS scales it to the column).
const W: f64 = 320.0;
const H: f64 = 90.0;
/// Most points drawn: longer series are thinned by taking every n-th point (the last always).
pub const MAX_POINTS: usize = 360;

/// One line: `(unix seconds, value)` points, oldest first.
#[derive(Debug, Clone)]
pub struct Series<'a> {
    /// Element id of the figure (also used to name its caption).
    pub id: &'a str,
    pub title: &'a str,
    pub points: Vec<(i64, f64)>,
    /// The value of the top of the chart; `None`: the largest value.
    pub ceiling: Option<f64>,
    /// How a value is written in the caption.
    pub format: fn(f64) -> String,
}

fn thinned(points: &[(i64, f64)]) -> Vec<(i64, f64)> {
    if points.len() <= MAX_POINTS {
        return points.to_vec();
    }
    let step = points.len().div_ceil(MAX_POINTS);
    let mut out: Vec<_> = points.iter().step_by(step).copied().collect();
    if out.last() != points.last() {
        out.extend(points.last().copied());
    }
    out
}

/// A span of seconds in words: "3 h", "2 days".
pub fn span(secs: i64) -> String {
    match secs {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s if s < 2 * 86_400 => format!("{} h", s / 3600),
        s => format!("{} days", s / 86_400),
    }
}

/// The chart of `s`, or a sentence when it has fewer than two points.
pub fn line(s: &Series<'_>) -> Markup {
    let caption_id = format!("{}-caption", s.id);
    let points = thinned(&s.points);
    let (Some(first), Some(last)) = (points.first(), points.last()) else {
        return html! {
            figure.chart id=(s.id) {
                figcaption id=(caption_id) { strong { (s.title) } ": no samples yet." }
            }
        };
    };
    let lo = points.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let hi = points.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
    let top = s.ceiling.unwrap_or(hi).max(hi).max(1e-9);
    let t0 = first.0;
    let dt = (last.0 - first.0).max(1) as f64;
    let mut path = String::with_capacity(points.len() * 14);
    for (i, (t, v)) in points.iter().enumerate() {
        let x = if points.len() == 1 {
            W
        } else {
            (t - t0) as f64 / dt * W
        };
        let y = H - (v / top).clamp(0.0, 1.0) * (H - 4.0) - 2.0;
        path.push_str(if i == 0 { "M" } else { " L" });
        path.push_str(&format!("{x:.1} {y:.1}"));
    }
    let area = format!("{path} L{W:.1} {H:.1} L0 {H:.1} Z");
    let words = format!(
        "{}: now {}, lowest {}, highest {} over the last {} ({} samples).",
        s.title,
        (s.format)(last.1),
        (s.format)(lo),
        (s.format)(hi),
        span(last.0 - first.0),
        s.points.len()
    );
    html! {
        figure.chart id=(s.id) {
            svg viewBox=(format!("0 0 {W} {H}")) preserveAspectRatio="none" role="img"
                aria-labelledby=(caption_id) focusable="false" {
                path.area d=(area) {}
                path.line d=(path) {}
            }
            figcaption id=(caption_id) { (words) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pct(v: f64) -> String {
        format!("{v:.0}%")
    }

    #[test]
    fn a_chart_says_its_figures_in_words_and_thins_long_series() {
        let points: Vec<_> = (0..1000).map(|i| (i * 60, (i % 100) as f64)).collect();
        let s = Series {
            id: "c",
            title: "CPU used",
            points,
            ceiling: Some(100.0),
            format: pct,
        };
        let html = line(&s).into_string();
        assert!(html.contains("now 99%, lowest 0%, highest 99%"), "{html}");
        assert!(html.contains("(1000 samples)"), "{html}");
        // Both the line and the area under it are drawn through the thinned points.
        let segments = html.matches(" L").count();
        assert!(segments <= 2 * (MAX_POINTS + 2), "{segments} segments");
        let none = Series {
            points: vec![],
            ..s
        };
        assert!(line(&none).into_string().contains("no samples yet"));
    }
}
