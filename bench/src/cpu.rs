//! CPU time the box's processes spent over a run, by program, read from
//! /proc (Linux; elsewhere there is nothing to show). Everything runs on
//! one box here, so this splits a run's cost between shopmesh, Postgres, the
//! broker, Redis and the load client itself.

use std::collections::HashMap;
use std::time::Duration;

/// Clock ticks per second of /proc's CPU times: USER_HZ, 100 on every
/// architecture Linux ships for servers.
const TICKS_PER_SEC: f64 = 100.0;

/// CPU time so far of every process, by pid and start time (a pid can be
/// reused), with its program name.
pub struct Snapshot(HashMap<(u32, u64), Ticks>);

#[derive(Debug, Clone, PartialEq, Eq)]
struct Ticks {
    /// Postgres' backends count as one program, as do kernel workers.
    program: String,
    /// User + system time of the process itself.
    own: u64,
    /// Of its children that exited and were reaped (Postgres' backends that
    /// closed during the run land in the postmaster's).
    children: u64,
}

impl Snapshot {
    /// `None` where /proc cannot be read.
    pub fn take() -> Option<Self> {
        let mut procs = HashMap::new();
        for entry in std::fs::read_dir("/proc").ok()?.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
            // A process may exit between the listing and the read.
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
            if let Some((started, ticks)) = parse_stat(&stat) {
                procs.insert((pid, started), ticks);
            }
        }
        Some(Self(procs))
    }

    /// CPU time per program between `self` and `later`, largest first;
    /// programs that used less than 1% of the total fold into "other". A
    /// process started since counts whole; one that exited counts through
    /// its parent once reaped (with whatever it used before `self`, too).
    pub fn spent_until(&self, later: &Snapshot) -> Vec<(String, Duration)> {
        let mut by_program: HashMap<&str, u64> = HashMap::new();
        for (key, now) in &later.0 {
            let spent = match self.0.get(key) {
                Some(then) => now.own.saturating_sub(then.own) + now.children.saturating_sub(then.children),
                None => now.own,
            };
            *by_program.entry(now.program.as_str()).or_default() += spent;
        }
        let mut spent: Vec<(&str, u64)> = by_program.into_iter().filter(|(_, t)| *t > 0).collect();
        let total: u64 = spent.iter().map(|(_, t)| t).sum();
        spent.sort_by_key(|&(program, t)| (std::cmp::Reverse(t), program));
        let (mut shown, mut other) = (Vec::new(), 0);
        for (program, t) in spent {
            if t * 100 >= total { shown.push((program.to_owned(), t)) } else { other += t }
        }
        if other > 0 {
            shown.push(("other".to_owned(), other));
        }
        shown.into_iter().map(|(p, t)| (p, Duration::from_secs_f64(t as f64 / TICKS_PER_SEC))).collect()
    }
}

/// `spent` in `unit` (per order, per cent of a core, …): the total and each
/// program's share, as `spent_until` ordered them.
pub fn in_units(spent: &[(String, Duration)], unit: impl Fn(Duration) -> f64) -> (f64, Vec<(&str, f64)>) {
    let shares: Vec<(&str, f64)> = spent.iter().map(|(p, d)| (p.as_str(), unit(*d))).collect();
    (shares.iter().map(|(_, v)| v).sum(), shares)
}

/// Start time and CPU ticks from a /proc/<pid>/stat line. The name sits in
/// parentheses and may itself hold spaces or parentheses.
fn parse_stat(stat: &str) -> Option<(u64, Ticks)> {
    let (open, close) = (stat.find('(')?, stat.rfind(')')?);
    let comm = stat.get(open + 1..close)?;
    // After the name, from field 3 (state): utime is field 14, stime 15,
    // cutime 16, cstime 17, starttime 22.
    let fields: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    let (own, children) = (field(14)? + field(15)?, field(16)? + field(17)?);
    let program = if comm.starts_with("postgres") || comm == "postmaster" {
        "postgres"
    } else if comm.starts_with("kworker/") {
        // Kernel workers name their current job ("kworker/u8:0-writeback").
        "kworker"
    } else {
        comm
    };
    Some((field(22)?, Ticks { program: program.to_owned(), own, children }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticks(program: &str, own: u64, children: u64) -> Ticks {
        Ticks { program: program.into(), own, children }
    }

    #[test]
    fn reads_a_stat_line_past_a_name_with_spaces_and_parentheses() {
        let stat = "42 (tokio (rt) 1) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 7 3 20 0 9 0 5000 0 0";
        assert_eq!(parse_stat(stat), Some((5000, ticks("tokio (rt) 1", 300, 10))));
        let backend = "7 (postgres) S 1 7 7 0 -1 4194560 100 0 0 0 3 4 0 0 20 0 1 0 12 0 0";
        assert_eq!(parse_stat(backend), Some((12, ticks("postgres", 7, 0))));
        let worker = "9 (kworker/u8:0-writeback) I 2 0 0 0 -1 69238880 0 0 0 0 0 12 0 0 20 0 1 0 5 0 0";
        assert_eq!(parse_stat(worker).unwrap().1.program, "kworker");
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn spending_is_counted_per_process_and_small_spenders_fold_into_other() {
        let before = Snapshot(HashMap::from([
            ((1, 10), ticks("a", 100, 0)),
            ((2, 10), ticks("postgres", 50, 0)),
            ((3, 10), ticks("postgres", 5000, 0)), // exits before `later`
            ((4, 10), ticks("b", 0, 0)),
        ]));
        let later = Snapshot(HashMap::from([
            ((1, 10), ticks("a", 1100, 0)),
            ((2, 10), ticks("postgres", 150, 5100)), // reaped pid 3
            ((4, 10), ticks("b", 5, 0)),
            ((5, 99), ticks("c", 300, 0)), // started since
        ]));
        let spent = before.spent_until(&later);
        let names: Vec<&str> = spent.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(names, ["postgres", "a", "c", "other"]);
        assert_eq!(spent[0].1, Duration::from_secs(52), "own 100 ticks + the reaped backend's 5100");
        assert_eq!(spent[1].1, Duration::from_secs(10));
    }
}
