//! Real network faults between nodes on distinct loopback addresses: iptables DROP rules that
//! this test process adds, each with a comment naming the process, and always removes (on
//! `heal` or on drop, also when the test panics). Rules of other processes are never touched,
//! except ones left by a test process of ours that no longer runs (a `kill -9`ed test run).
//!
//! Needs root and the `iptables` command. Without them a test says so and passes, unless
//! `TOPGUN_REQUIRE_TOOLS=1` (CI) makes that a failure.
use std::net::IpAddr;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Prefix of every comment this suite puts on a rule: `topgun-test-<pid>-<n>`.
const COMMENT_PREFIX: &str = "topgun-test-";

static CUTS: AtomicUsize = AtomicUsize::new(0);

fn iptables(args: &[&str]) -> Result<String, String> {
    let out = Command::new("iptables")
        .arg("-w")
        .args(args)
        .output()
        .map_err(|e| format!("iptables: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "iptables {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Whether this process may add rules; `false` means the test should skip (never in CI).
pub fn available() -> bool {
    match iptables(&["-S", "INPUT"]) {
        Ok(_) => {
            remove_stale_rules();
            true
        }
        Err(e) if std::env::var("TOPGUN_REQUIRE_TOOLS").as_deref() == Ok("1") => {
            panic!("iptables is required (TOPGUN_REQUIRE_TOOLS=1): {e}")
        }
        Err(e) => {
            eprintln!("SKIPPED: needs root and iptables (apt-get install iptables): {e}");
            false
        }
    }
}

/// Deletes rules whose comment names a test process of ours that has exited.
fn remove_stale_rules() {
    let Ok(rules) = iptables(&["-S", "INPUT"]) else {
        return;
    };
    for rule in rules.lines() {
        let Some(pid) = rule
            .split(COMMENT_PREFIX)
            .nth(1)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        if let Some(spec) = rule.strip_prefix("-A ") {
            let mut args = vec!["-D"];
            args.extend(spec.split_whitespace().map(|a| a.trim_matches('"')));
            let _ = iptables(&args);
        }
    }
}

/// Packets dropped between two groups of addresses, both ways, until healed.
pub struct Cut {
    comment: String,
    /// The match part of each rule added, for its deletion.
    rules: Vec<Vec<String>>,
}

impl Cut {
    /// Drops every packet from each address of `side` to each of `others` and back.
    pub fn between(side: &[IpAddr], others: &[IpAddr]) -> Cut {
        Cut::with(side, others, &[])
    }

    /// Drops only TCP between the groups: membership (UDP) still sees every member alive,
    /// the node-to-node links cannot connect.
    pub fn tcp_between(side: &[IpAddr], others: &[IpAddr]) -> Cut {
        Cut::with(side, others, &["-p", "tcp"])
    }

    fn with(side: &[IpAddr], others: &[IpAddr], extra: &[&str]) -> Cut {
        let comment = format!(
            "{COMMENT_PREFIX}{}-{}",
            std::process::id(),
            CUTS.fetch_add(1, Ordering::SeqCst)
        );
        let mut cut = Cut {
            comment,
            rules: Vec::new(),
        };
        for a in side {
            for b in others {
                for (src, dst) in [(a, b), (b, a)] {
                    let mut rule: Vec<String> = vec![
                        "INPUT".into(),
                        "-s".into(),
                        src.to_string(),
                        "-d".into(),
                        dst.to_string(),
                    ];
                    rule.extend(extra.iter().map(|s| s.to_string()));
                    rule.extend(
                        ["-m", "comment", "--comment", &cut.comment, "-j", "DROP"]
                            .iter()
                            .map(|s| s.to_string()),
                    );
                    let mut args = vec!["-I"];
                    args.extend(rule.iter().map(String::as_str));
                    if let Err(e) = iptables(&args) {
                        // `cut` drops here and removes what was already added.
                        panic!("adding a DROP rule: {e}");
                    }
                    cut.rules.push(rule);
                }
            }
        }
        eprintln!(
            "network cut ({}): {side:?} <-/-> {others:?} {extra:?}",
            cut.comment
        );
        cut
    }

    /// Removes the rules: the network is whole again.
    pub fn heal(self) {}
}

impl Drop for Cut {
    fn drop(&mut self) {
        for rule in self.rules.drain(..) {
            let mut args = vec!["-D"];
            args.extend(rule.iter().map(String::as_str));
            if let Err(e) = iptables(&args) {
                eprintln!("removing a DROP rule ({}): {e}", self.comment);
            }
        }
        let left = iptables(&["-S", "INPUT"])
            .map(|r| r.lines().filter(|l| l.contains(&self.comment)).count())
            .unwrap_or(0);
        if left > 0 && !std::thread::panicking() {
            panic!(
                "{left} rules with comment {} are still in place",
                self.comment
            );
        }
        eprintln!("network healed ({})", self.comment);
    }
}
