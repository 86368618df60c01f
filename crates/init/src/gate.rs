//! The health gate of an upgrade: within a set time after the switch, the new zosd must show,
//! in its health file ([`crate::local::Health`]), that it runs the new version, is registered,
//! has its uplink up, has finished reconciling, and that every workload that was `ok` before
//! the switch is still `ok`. A zosd that keeps ending (a crash loop) fails the gate at once.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::local::Health;

/// The default time the new version has to pass the gate.
pub const DEFAULT_TIME: Duration = Duration::from_secs(300);
/// How many times the new zosd may end by itself before the gate fails as a crash loop.
pub const MAX_EXITS: u32 = 3;

/// What the new version must show, and by when.
#[derive(Debug, Clone)]
pub struct Gate {
    pub version: String,
    /// The workloads `ok` before the switch.
    pub ok_before: BTreeSet<String>,
    pub started: Instant,
    pub time: Duration,
    pub max_exits: u32,
}

/// Where the new version stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Passed: commit.
    Pass,
    /// Not yet: what is still missing.
    Wait(String),
    /// Failed: roll back, for this reason.
    Fail(String),
}

impl Gate {
    /// Judges `health` (None: no health file from the new zosd yet) after the new zosd ended
    /// `exits` times, at `now`.
    pub fn judge(&self, health: Option<&Health>, exits: u32, now: Instant) -> Verdict {
        if exits >= self.max_exits {
            return Verdict::Fail(format!(
                "zosd {} ended {exits} times since the switch (crash loop)",
                self.version
            ));
        }
        let missing = self.missing(health);
        if missing.is_empty() {
            return Verdict::Pass;
        }
        let missing = missing.join(", ");
        if now.saturating_duration_since(self.started) >= self.time {
            Verdict::Fail(format!(
                "health gate missed after {}s: {missing}",
                self.time.as_secs()
            ))
        } else {
            Verdict::Wait(missing)
        }
    }

    fn missing(&self, health: Option<&Health>) -> Vec<String> {
        let Some(h) = health else {
            return vec![format!("no health report from zosd {}", self.version)];
        };
        if h.version != self.version {
            return vec![format!(
                "zosd reports version {}, not {}",
                h.version.chars().take(40).collect::<String>(),
                self.version
            )];
        }
        let mut out = Vec::new();
        if !h.registered {
            out.push("not registered with its version".to_string());
        }
        if !h.uplink {
            out.push("uplink down".to_string());
        }
        if !h.reconciled {
            out.push("reconcile not finished".to_string());
        }
        let lost: Vec<&str> = self
            .ok_before
            .difference(&h.ok)
            .map(String::as_str)
            .take(10)
            .collect();
        if !lost.is_empty() {
            out.push(format!("workloads no longer ok: {}", lost.join(" ")));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy(version: &str, ok: &[&str]) -> Health {
        Health {
            version: version.into(),
            registered: true,
            uplink: true,
            reconciled: true,
            ok: ok.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn the_gate_passes_only_with_every_fact_and_fails_on_time_or_crash_loop() {
        let t0 = Instant::now();
        let gate = Gate {
            version: "1.1.0".into(),
            ok_before: ["1-1".to_string(), "2-1".to_string()].into(),
            started: t0,
            time: Duration::from_secs(60),
            max_exits: MAX_EXITS,
        };
        let soon = t0 + Duration::from_secs(1);
        let late = t0 + Duration::from_secs(60);
        assert!(matches!(gate.judge(None, 0, soon), Verdict::Wait(w) if w.contains("no health")));
        // The old zosd's file does not count.
        let old = healthy("1.0.0", &["1-1", "2-1"]);
        assert!(
            matches!(gate.judge(Some(&old), 0, soon), Verdict::Wait(w) if w.contains("not 1.1.0"))
        );
        let good = healthy("1.1.0", &["1-1", "2-1", "3-1"]);
        assert_eq!(gate.judge(Some(&good), 2, soon), Verdict::Pass);
        for (h, want) in [
            (
                Health {
                    uplink: false,
                    ..good.clone()
                },
                "uplink down",
            ),
            (
                Health {
                    registered: false,
                    ..good.clone()
                },
                "not registered",
            ),
            (
                Health {
                    reconciled: false,
                    ..good.clone()
                },
                "reconcile not finished",
            ),
            (healthy("1.1.0", &["1-1"]), "workloads no longer ok: 2-1"),
        ] {
            assert!(
                matches!(gate.judge(Some(&h), 0, soon), Verdict::Wait(ref w) if w.contains(want)),
                "{want}"
            );
            match gate.judge(Some(&h), 0, late) {
                Verdict::Fail(r) => {
                    assert!(
                        r.contains("health gate missed after 60s") && r.contains(want),
                        "{r}"
                    )
                }
                v => panic!("{v:?}"),
            }
        }
        match gate.judge(Some(&good), MAX_EXITS, soon) {
            Verdict::Fail(r) => assert!(r.contains("crash loop"), "{r}"),
            v => panic!("{v:?}"),
        }
    }
}
