//! CPU time the box's processes spent over a run, by program, read from
//! /proc (Linux; elsewhere there is nothing to show). Everything runs on
//! one box here, so this splits a run's cost between shopmesh, Postgres, the
//! broker, Redis and the load client itself.

use std::collections::BTreeMap;
use std::time::Duration;

/// Clock ticks per second of /proc's CPU times: USER_HZ, 100 on every
/// architecture Linux ships for servers.
const TICKS_PER_SEC: f64 = 100.0;

/// CPU time so far per program name (Postgres' backends counted as one).
pub struct Snapshot(BTreeMap<String, u64>);

impl Snapshot {
    /// `None` where /proc cannot be read.
    pub fn take() -> Option<Self> {
        let mut ticks = BTreeMap::new();
        for entry in std::fs::read_dir("/proc").ok()?.flatten() {
            let name = entry.file_name();
            if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            // A process may exit between the listing and the read.
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
            if let Some((program, used)) = parse_stat(&stat) {
                *ticks.entry(program).or_default() += used;
            }
        }
        Some(Self(ticks))
    }

    /// CPU time per program between `self` and `later`, largest first;
    /// programs that used less than 1% of the total fold into "other".
    pub fn spent_until(&self, later: &Snapshot) -> Vec<(String, Duration)> {
        let mut spent: Vec<(String, u64)> = later
            .0
            .iter()
            .map(|(program, &t)| (program.clone(), t.saturating_sub(self.0.get(program).copied().unwrap_or(0))))
            .filter(|(_, t)| *t > 0)
            .collect();
        let total: u64 = spent.iter().map(|(_, t)| t).sum();
        spent.sort_by_key(|(_, t)| std::cmp::Reverse(*t));
        let (mut shown, mut other) = (Vec::new(), 0);
        for (program, t) in spent {
            if t * 100 >= total { shown.push((program, t)) } else { other += t }
        }
        if other > 0 {
            shown.push(("other".to_owned(), other));
        }
        shown.into_iter().map(|(p, t)| (p, Duration::from_secs_f64(t as f64 / TICKS_PER_SEC))).collect()
    }
}

/// Program name and user + system ticks from a /proc/<pid>/stat line. The
/// name sits in parentheses and may itself hold spaces or parentheses.
fn parse_stat(stat: &str) -> Option<(String, u64)> {
    let (open, close) = (stat.find('(')?, stat.rfind(')')?);
    let comm = stat.get(open + 1..close)?;
    // After the name: state is field 3, utime field 14, stime field 15.
    let fields: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    let used = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // Kernel workers name their current job ("kworker/u8:0-writeback"): one line for them all.
    let program = if comm.starts_with("postgres") || comm == "postmaster" {
        "postgres"
    } else if comm.starts_with("kworker/") {
        "kworker"
    } else {
        comm
    };
    Some((program.to_owned(), used))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_user_and_system_ticks_past_a_name_with_spaces_and_parentheses() {
        let stat = "42 (tokio (rt) 1) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9 0 5 0 0";
        assert_eq!(parse_stat(stat), Some(("tokio (rt) 1".to_owned(), 300)));
        let backend = "7 (postgres) S 1 7 7 0 -1 4194560 100 0 0 0 3 4 0 0 20 0 1 0 5 0 0";
        assert_eq!(parse_stat(backend), Some(("postgres".to_owned(), 7)));
        let worker = "9 (kworker/u8:0-writeback) I 2 0 0 0 -1 69238880 0 0 0 0 0 12 0 0 20 0 1 0 5 0 0";
        assert_eq!(parse_stat(worker), Some(("kworker".to_owned(), 12)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn small_spenders_fold_into_other() {
        let before = Snapshot(BTreeMap::from([("a".into(), 100), ("b".into(), 0)]));
        let after = Snapshot(BTreeMap::from([("a".into(), 1100), ("b".into(), 5), ("c".into(), 300)]));
        let spent = before.spent_until(&after);
        let names: Vec<&str> = spent.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(names, ["a", "c", "other"]);
        assert_eq!(spent[0].1, Duration::from_secs(10));
    }
}
