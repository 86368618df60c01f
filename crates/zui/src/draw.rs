//! Drawing a [`Screen`]: a title line with the view tabs, the view, and a line of help.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Paragraph, Tabs, Wrap};
use zos_types::capacity::GIB;

use crate::screen::{Screen, Uplink};

/// The views the keys switch between.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum View {
    /// Identity, uplink, addresses, capacity and a line of workload counts.
    #[default]
    Node,
    /// Workloads by type and state.
    Workloads,
    /// The last warnings and errors of each subsystem.
    Errors,
}

impl View {
    pub const ALL: [View; 3] = [View::Node, View::Workloads, View::Errors];

    fn title(self) -> &'static str {
        match self {
            View::Node => "1 Node",
            View::Workloads => "2 Workloads",
            View::Errors => "3 Errors",
        }
    }

    fn index(self) -> usize {
        Self::ALL.iter().position(|v| *v == self).unwrap_or(0)
    }

    /// The next view (Tab, →).
    pub fn next(self) -> View {
        Self::ALL[(self.index() + 1) % Self::ALL.len()]
    }

    /// The previous view (Shift-Tab, ←).
    pub fn previous(self) -> View {
        Self::ALL[(self.index() + Self::ALL.len() - 1) % Self::ALL.len()]
    }
}

const LABEL: Style = Style::new().fg(Color::Cyan);
const GOOD: Style = Style::new().fg(Color::Green);
const BAD: Style = Style::new().fg(Color::Red).add_modifier(Modifier::BOLD);

/// Draws `view` of `screen` over the whole frame.
pub fn draw(frame: &mut Frame<'_>, screen: &Screen, view: View) {
    let [top, body, help] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(0),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    let [name, tabs] = Layout::horizontal([Constraint::Min(0), Constraint::Length(36)]).areas(top);
    let id = match screen.node_id {
        Some(n) => format!("node {n}"),
        None => "node (registering)".into(),
    };
    frame.render_widget(
        Paragraph::new(Line::from(vec![
            Span::styled(
                " zos ",
                Style::new().add_modifier(Modifier::REVERSED | Modifier::BOLD),
            ),
            Span::raw(format!(
                " {id} · farm {} · {} · {}",
                screen.farm_id, screen.runmode, screen.version
            )),
        ])),
        name,
    );
    frame.render_widget(
        Tabs::new(View::ALL.map(View::title))
            .select(view.index())
            .highlight_style(Style::new().add_modifier(Modifier::REVERSED)),
        tabs,
    );
    match view {
        View::Node => node(frame, screen, body),
        View::Workloads => workloads(frame, screen, body),
        View::Errors => errors(frame, screen, body),
    }
    frame.render_widget(
        Paragraph::new(" Tab, ←/→ or 1-3 switch views. This screen is read-only.").dim(),
        help,
    );
}

/// `HH:MM:SS` (UTC) of a unix time.
fn clock(at: i64) -> String {
    let s = at.rem_euclid(86_400);
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

/// `3h 02m`, `5m 07s`, `12s`.
fn span_of(secs: i64) -> String {
    let s = secs.max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {:02}s", s / 60, s % 60),
        3600..86_400 => format!("{}h {:02}m", s / 3600, s / 60 % 60),
        _ => format!("{}d {:02}h", s / 86_400, s / 3600 % 24),
    }
}

fn bar(used: u64, total: u64, width: usize) -> Span<'static> {
    let filled = if total == 0 {
        0
    } else {
        ((used.min(total) as u128 * width as u128).div_ceil(total as u128)) as usize
    };
    let style = if total > 0 && used * 10 >= total * 9 {
        BAD
    } else {
        GOOD
    };
    Span::styled(
        format!("{}{}", "█".repeat(filled), "░".repeat(width - filled)),
        style,
    )
}

fn gib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / GIB as f64)
}

fn node(frame: &mut Frame<'_>, s: &Screen, area: Rect) {
    let field = |name: &'static str| Span::styled(format!("  {name:<10}"), LABEL);
    let mut lines = vec![Line::from(vec![
        field("node"),
        Span::raw(match (s.node_id, s.twin_id) {
            (Some(n), Some(t)) => format!("{n} (twin {t})"),
            (Some(n), None) => n.to_string(),
            _ => "not registered yet".into(),
        }),
        Span::styled("   farm ", LABEL),
        Span::raw(s.farm_id.to_string()),
        Span::styled("   runmode ", LABEL),
        Span::raw(s.runmode.clone()),
    ])];
    lines.push(Line::from(vec![
        field("version"),
        Span::raw(s.version.clone()),
        Span::styled("   upgrade ", LABEL),
        Span::raw(s.upgrade.clone().unwrap_or_else(|| "none under way".into())),
    ]));
    let uplink = match s.uplink {
        Uplink::Waiting => Span::raw("waiting for the registration"),
        Uplink::Up { since } => Span::styled(format!("up for {}", span_of(s.now - since)), GOOD),
        Uplink::Down { since } => Span::styled(format!("DOWN for {}", span_of(s.now - since)), BAD),
    };
    lines.push(Line::from(vec![
        field("uplink"),
        uplink,
        Span::raw(format!("  to {}", s.grid)),
    ]));
    if let Some(e) = &s.grid_error {
        lines.push(Line::from(vec![
            field("grid"),
            Span::styled(e.clone(), BAD),
        ]));
    }
    if let Some(why) = &s.limited {
        lines.push(Line::from(vec![
            field("limited"),
            Span::styled(why.clone(), BAD),
        ]));
    }
    lines.push(Line::default());
    lines.push(Line::styled(
        "  Addresses",
        LABEL.add_modifier(Modifier::BOLD),
    ));
    if s.addresses.is_empty() {
        lines.push(Line::raw("    none yet"));
    }
    for (iface, ips) in &s.addresses {
        let ips = if ips.is_empty() {
            "no address".to_string()
        } else {
            ips.join(", ")
        };
        lines.push(Line::from(vec![
            Span::raw(format!("    {iface:<10}")),
            Span::raw(ips),
        ]));
    }
    lines.push(Line::default());
    lines.push(Line::styled(
        "  Capacity (used / total)",
        LABEL.add_modifier(Modifier::BOLD),
    ));
    let (u, t) = (&s.capacity_used, &s.capacity_total);
    for (name, used, total, text) in [
        ("CPU", u.cru, t.cru, format!("{} / {} cores", u.cru, t.cru)),
        (
            "memory",
            u.mru,
            t.mru,
            format!("{} / {} GiB", gib(u.mru), gib(t.mru)),
        ),
        (
            "SSD",
            u.sru,
            t.sru,
            format!("{} / {} GiB", gib(u.sru), gib(t.sru)),
        ),
        (
            "HDD",
            u.hru,
            t.hru,
            format!("{} / {} GiB", gib(u.hru), gib(t.hru)),
        ),
    ] {
        lines.push(Line::from(vec![
            Span::raw(format!("    {name:<8}")),
            bar(used, total, 20),
            Span::raw(format!(" {text}")),
        ]));
    }
    lines.push(Line::default());
    let total: usize = s.workloads.values().flat_map(|b| b.values()).sum();
    let failed = s.count_in("error");
    lines.push(Line::from(vec![
        Span::styled("  Workloads ", LABEL.add_modifier(Modifier::BOLD)),
        Span::raw(format!(
            "{total} in all: {} ok, {} paused, ",
            s.count_in("ok"),
            s.count_in("paused")
        )),
        Span::styled(
            format!("{failed} in error"),
            if failed > 0 { BAD } else { Style::new() },
        ),
    ]));
    let errors = s.errors.len();
    if errors > 0 {
        lines.push(Line::from(vec![
            Span::styled("  Errors    ", LABEL.add_modifier(Modifier::BOLD)),
            Span::styled(format!("{errors} recent (view 3)"), BAD),
        ]));
    }
    frame.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(" Node ")),
        area,
    );
}

fn workloads(frame: &mut Frame<'_>, s: &Screen, area: Rect) {
    let states = ["ok", "init", "starting", "paused", "error", "deleted"];
    let mut lines = vec![Line::styled(
        format!(
            "  {:<20}{}",
            "type",
            states
                .iter()
                .map(|st| format!("{st:>9}"))
                .collect::<String>()
        ),
        LABEL.add_modifier(Modifier::BOLD),
    )];
    if s.workloads.is_empty() {
        lines.push(Line::raw("  no workloads on this node"));
    }
    for (kind, by) in &s.workloads {
        let mut spans = vec![Span::raw(format!("  {kind:<20}"))];
        for st in states {
            let n = by.get(st).copied().unwrap_or(0);
            let style = if st == "error" && n > 0 {
                BAD
            } else {
                Style::new()
            };
            spans.push(Span::styled(format!("{n:>9}"), style));
        }
        lines.push(Line::from(spans));
    }
    frame.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(" Workloads by type and state ")),
        area,
    );
}

fn errors(frame: &mut Frame<'_>, s: &Screen, area: Rect) {
    let mut lines = Vec::new();
    if s.errors.is_empty() {
        lines.push(Line::styled("  no warnings or errors", GOOD));
    }
    for e in s.errors.iter().rev() {
        let style = if e.level == "ERROR" {
            BAD
        } else {
            Style::new().fg(Color::Yellow)
        };
        lines.push(Line::from(vec![
            Span::raw(format!("  {} ", clock(e.at))),
            Span::styled(format!("{:<5} ", e.level), style),
            Span::styled(format!("{:<10} ", e.subsystem), LABEL),
            Span::raw(e.message.clone()),
        ]));
    }
    frame.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .block(Block::bordered().title(" Last warnings and errors, newest first (UTC) ")),
        area,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_and_clocks() {
        assert_eq!(span_of(12), "12s");
        assert_eq!(span_of(307), "5m 07s");
        assert_eq!(span_of(3 * 3600 + 120), "3h 02m");
        assert_eq!(span_of(-4), "0s");
        assert_eq!(clock(86_400 + 3661), "01:01:01");
        assert_eq!(View::Node.next(), View::Workloads);
        assert_eq!(View::Node.previous(), View::Errors);
    }
}
