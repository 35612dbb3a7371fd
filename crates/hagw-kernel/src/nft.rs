//! nftables: the one place hagw runs `nft`.
//!
//! hagw owns its tables **by name** ([`Table`]): a table is only ever
//! replaced or deleted through the [`Table`] that names it, and foreign tables
//! are only read. A table is replaced atomically: one `nft -f -` transaction
//! that creates it (so the delete cannot fail), deletes it and writes it anew,
//! so packets see either the old ruleset or the new one, never a mix or none.
//!
//! Why the `nft` binary rather than raw nfnetlink: the rulesets are small and
//! change rarely (a router joining, a port forward added), the text format is
//! what an operator reads in `nft list ruleset` and in our tests, and `nft`
//! does the bytecode compilation (maps, sets, `rt nexthop`) we would otherwise
//! have to write. The hot paths (routes, rules) stay on netlink.
//!
//! Both an async runner (the daemon) and a blocking one (the lab and tests,
//! which may run it inside a named network namespace) share the script
//! builders.

use std::{
    fmt::{self, Write as _},
    io::Write as _,
    process::{Command, Stdio},
    time::Duration,
};

use tokio::io::AsyncWriteExt;

pub mod watch;

/// Longest an `nft` run may take.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Errors of running `nft`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NftError {
    /// A table or chain name that would not survive the script text.
    #[error("nft name {0:?}: use letters, digits and '_' (at most 64)")]
    Name(String),
    /// An interface name that cannot go into a ruleset.
    #[error("interface name {0:?}: at most 15 of letters, digits and - _ . @")]
    Interface(String),
    /// The program could not be started or fed.
    #[error("cannot run {program}: {reason}")]
    Spawn { program: String, reason: String },
    #[error("{program} timed out after {TIMEOUT:?}")]
    Timeout { program: String },
    /// nft refused the script: its own message.
    #[error("nft -f - failed ({status}): {stderr}")]
    Failed { status: String, stderr: String },
    /// `nft -j` output that does not parse.
    #[error("nft -j output: {0}")]
    Json(String),
}

/// An nftables address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    Inet,
    Ip,
    Ip6,
    Netdev,
    Bridge,
    Arp,
}

impl Family {
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Inet => "inet",
            Family::Ip => "ip",
            Family::Ip6 => "ip6",
            Family::Netdev => "netdev",
            Family::Bridge => "bridge",
            Family::Arp => "arp",
        }
    }

    fn parse(s: &str) -> Option<Family> {
        Some(match s {
            "inet" => Family::Inet,
            "ip" => Family::Ip,
            "ip6" => Family::Ip6,
            "netdev" => Family::Netdev,
            "bridge" => Family::Bridge,
            "arp" => Family::Arp,
            _ => return None,
        })
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether `s` is a name hagw writes into a script (table, chain, set).
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.starts_with(|c: char| c.is_ascii_alphabetic())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Whether `s` is an interface name that may go into a ruleset (quoted).
pub fn valid_interface(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && !s.starts_with('.')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'))
}

/// A table hagw owns. The only handle through which a table is written.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Table {
    family: Family,
    name: String,
}

impl Table {
    pub fn new(family: Family, name: &str) -> Result<Table, NftError> {
        if !valid_name(name) {
            return Err(NftError::Name(name.to_string()));
        }
        Ok(Table {
            family,
            name: name.to_string(),
        })
    }

    pub fn family(&self) -> Family {
        self.family
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The script that replaces the table with `body` (the text between the
    /// table's braces) in one transaction.
    pub fn replace_script(&self, body: &str) -> String {
        let mut s = self.delete_script();
        let _ = write!(s, "table {self} {{\n{body}}}\n");
        s
    }

    /// The script that deletes the table, whether or not it exists.
    pub fn delete_script(&self) -> String {
        format!("table {self} {{}}\ndelete table {self}\n")
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.family, self.name)
    }
}

/// The table body of a **silent cut** of `dev`: every frame dropped in both
/// directions at the netdev hooks (ARP included), so the link is dead and
/// nothing answers, not even an RST. Used by the lab's `fail`, the failover
/// benchmarks and the scenario tests.
pub fn silent_cut_body(dev: &str) -> Result<String, NftError> {
    if !valid_interface(dev) {
        return Err(NftError::Interface(dev.to_string()));
    }
    Ok(format!(
        "\tchain in {{ type filter hook ingress device \"{dev}\" priority -500; policy drop; }}\n\
         \tchain out {{ type filter hook egress device \"{dev}\" priority -500; policy drop; }}\n"
    ))
}

/// How to run `nft`: the program, and optionally a named network namespace
/// (`ip netns exec NS nft ...`, for the lab and tests). The daemon runs it in
/// its own namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nft {
    program: String,
    netns: Option<String>,
}

impl Default for Nft {
    fn default() -> Self {
        Nft::new("nft")
    }
}

/// One rule's counter, from [`Nft::counters`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleCounter {
    pub chain: String,
    /// The rule's comment, if it has one (hagw comments every rule it wants
    /// to report).
    pub comment: Option<String>,
    pub packets: u64,
    pub bytes: u64,
}

impl Nft {
    pub fn new(program: &str) -> Nft {
        Nft {
            program: program.to_string(),
            netns: None,
        }
    }

    /// `nft` inside the named network namespace.
    pub fn in_netns(ns: &str) -> Nft {
        Nft {
            program: "nft".to_string(),
            netns: Some(ns.to_string()),
        }
    }

    pub fn program(&self) -> &str {
        &self.program
    }

    fn command_line(&self, args: &[&str]) -> (String, Vec<String>) {
        let mut argv: Vec<String> = Vec::new();
        let prog = match &self.netns {
            Some(ns) => {
                argv.extend(["netns", "exec", ns, &self.program].map(String::from));
                "ip".to_string()
            }
            None => self.program.clone(),
        };
        argv.extend(args.iter().map(|a| a.to_string()));
        (prog, argv)
    }

    fn spawn_err(&self, e: impl fmt::Display) -> NftError {
        NftError::Spawn {
            program: self.program.clone(),
            reason: e.to_string(),
        }
    }

    fn result(status: std::process::ExitStatus, stderr: &[u8]) -> Result<(), NftError> {
        if status.success() {
            Ok(())
        } else {
            Err(NftError::Failed {
                status: status.to_string(),
                stderr: String::from_utf8_lossy(stderr).trim().to_string(),
            })
        }
    }

    /// Runs `script` as one transaction (`nft -f -`).
    pub async fn run(&self, script: &str) -> Result<(), NftError> {
        let (prog, argv) = self.command_line(&["-f", "-"]);
        let mut child = tokio::process::Command::new(prog)
            .args(&argv)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| self.spawn_err(e))?;
        if let Some(mut stdin) = child.stdin.take() {
            // nft may refuse before reading it all: its exit status and
            // message below say why, not the broken pipe.
            if let Err(e) = stdin.write_all(script.as_bytes()).await {
                if e.kind() != std::io::ErrorKind::BrokenPipe {
                    return Err(self.spawn_err(format!("writing the script: {e}")));
                }
            }
        }
        let out = tokio::time::timeout(TIMEOUT, child.wait_with_output())
            .await
            .map_err(|_| NftError::Timeout {
                program: self.program.clone(),
            })?
            .map_err(|e| self.spawn_err(e))?;
        Self::result(out.status, &out.stderr)
    }

    /// [`Nft::run`] without a runtime (lab, tests, `hagw check`).
    pub fn run_blocking(&self, script: &str) -> Result<(), NftError> {
        let (prog, argv) = self.command_line(&["-f", "-"]);
        let mut child = Command::new(prog)
            .args(&argv)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| self.spawn_err(e))?;
        if let Some(mut stdin) = child.stdin.take() {
            if let Err(e) = stdin.write_all(script.as_bytes()) {
                if e.kind() != std::io::ErrorKind::BrokenPipe {
                    return Err(self.spawn_err(format!("writing the script: {e}")));
                }
            }
        }
        let out = child.wait_with_output().map_err(|e| self.spawn_err(e))?;
        Self::result(out.status, &out.stderr)
    }

    /// Replaces `table` with `body`, atomically.
    pub async fn replace(&self, table: &Table, body: &str) -> Result<(), NftError> {
        self.run(&table.replace_script(body)).await
    }

    /// Deletes `table` if it exists.
    pub async fn delete(&self, table: &Table) -> Result<(), NftError> {
        self.run(&table.delete_script()).await
    }

    pub fn replace_blocking(&self, table: &Table, body: &str) -> Result<(), NftError> {
        self.run_blocking(&table.replace_script(body))
    }

    pub fn delete_blocking(&self, table: &Table) -> Result<(), NftError> {
        self.run_blocking(&table.delete_script())
    }

    async fn output(&self, args: &[&str]) -> Result<String, NftError> {
        let (prog, argv) = self.command_line(args);
        let out = tokio::time::timeout(
            TIMEOUT,
            tokio::process::Command::new(prog)
                .args(&argv)
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .output(),
        )
        .await
        .map_err(|_| NftError::Timeout {
            program: self.program.clone(),
        })?
        .map_err(|e| self.spawn_err(e))?;
        Self::result(out.status, &out.stderr)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Every table in the namespace (read only: foreign tables are listed,
    /// never written).
    pub async fn tables(&self) -> Result<Vec<(Family, String)>, NftError> {
        parse_tables(&self.output(&["-j", "list", "tables"]).await?)
    }

    /// The shape of `table`, or `None` when it does not exist.
    pub async fn shape(&self, table: &Table) -> Result<Option<TableShape>, NftError> {
        let present = self
            .tables()
            .await?
            .iter()
            .any(|(f, n)| *f == table.family && *n == table.name);
        if !present {
            return Ok(None);
        }
        let out = self
            .output(&["-j", "list", "table", table.family.as_str(), &table.name])
            .await?;
        parse_shape(&out).map(Some)
    }

    /// The counters of `table`'s rules (rules without a `counter` are left
    /// out).
    pub async fn counters(&self, table: &Table) -> Result<Vec<RuleCounter>, NftError> {
        let out = self
            .output(&["-j", "list", "table", table.family.as_str(), &table.name])
            .await?;
        parse_counters(&out)
    }
}

fn json(text: &str) -> Result<serde_json::Value, NftError> {
    serde_json::from_str(text).map_err(|e| NftError::Json(e.to_string()))
}

fn items(v: &serde_json::Value) -> Result<&Vec<serde_json::Value>, NftError> {
    v.get("nftables")
        .and_then(|n| n.as_array())
        .ok_or_else(|| NftError::Json("no \"nftables\" array".into()))
}

/// Parses `nft -j list tables`.
pub fn parse_tables(text: &str) -> Result<Vec<(Family, String)>, NftError> {
    let v = json(text)?;
    Ok(items(&v)?
        .iter()
        .filter_map(|i| i.get("table"))
        .filter_map(|t| {
            let fam = Family::parse(t.get("family")?.as_str()?)?;
            Some((fam, t.get("name")?.as_str()?.to_string()))
        })
        .collect())
}

/// What a table holds, as far as hagw checks it has not been tampered with:
/// rules per chain and the names of its sets. Cheap to compare with what was
/// loaded, and blind to nft's formatting of the rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableShape {
    pub rules: std::collections::BTreeMap<String, usize>,
    pub sets: std::collections::BTreeSet<String>,
}

/// Parses the shape of the table out of `nft -j list table F N`.
pub fn parse_shape(text: &str) -> Result<TableShape, NftError> {
    let v = json(text)?;
    let mut shape = TableShape::default();
    for i in items(&v)? {
        if let Some(name) = i
            .get("chain")
            .and_then(|c| c.get("name"))
            .and_then(|n| n.as_str())
        {
            shape.rules.entry(name.to_string()).or_default();
        } else if let Some(chain) = i
            .get("rule")
            .and_then(|r| r.get("chain"))
            .and_then(|c| c.as_str())
        {
            *shape.rules.entry(chain.to_string()).or_default() += 1;
        } else if let Some(name) = i
            .get("set")
            .and_then(|s| s.get("name"))
            .and_then(|n| n.as_str())
        {
            shape.sets.insert(name.to_string());
        }
    }
    Ok(shape)
}

/// Parses the counters out of `nft -j list table F N`.
pub fn parse_counters(text: &str) -> Result<Vec<RuleCounter>, NftError> {
    let v = json(text)?;
    let mut out = Vec::new();
    for rule in items(&v)?.iter().filter_map(|i| i.get("rule")) {
        let chain = rule
            .get("chain")
            .and_then(|c| c.as_str())
            .unwrap_or_default();
        let comment = rule
            .get("comment")
            .and_then(|c| c.as_str())
            .map(String::from);
        let Some(exprs) = rule.get("expr").and_then(|e| e.as_array()) else {
            continue;
        };
        for c in exprs.iter().filter_map(|e| e.get("counter")) {
            out.push(RuleCounter {
                chain: chain.to_string(),
                comment: comment.clone(),
                packets: c.get("packets").and_then(|p| p.as_u64()).unwrap_or(0),
                bytes: c.get("bytes").and_then(|p| p.as_u64()).unwrap_or(0),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(Table::new(Family::Inet, "hagw_pin").is_ok());
        for bad in ["", "1abc", "a b", "a;b", "a}", &"x".repeat(65)] {
            assert_eq!(
                Table::new(Family::Inet, bad),
                Err(NftError::Name(bad.to_string()))
            );
        }
        assert!(valid_interface("eth0.100"));
        assert!(!valid_interface("eth0\""));
        assert!(!valid_interface("averyveryverylongname"));
    }

    #[test]
    fn replace_is_one_transaction_that_cannot_fail_on_a_missing_table() {
        let t = Table::new(Family::Inet, "hagw").expect("name");
        assert_eq!(
            t.replace_script("\tchain c {}\n"),
            "table inet hagw {}\ndelete table inet hagw\ntable inet hagw {\n\tchain c {}\n}\n"
        );
        assert_eq!(
            t.delete_script(),
            "table inet hagw {}\ndelete table inet hagw\n"
        );
    }

    #[test]
    fn silent_cut_drops_both_ways() {
        let b = silent_cut_body("eth1").expect("dev");
        assert!(b.contains("hook ingress device \"eth1\""));
        assert!(b.contains("hook egress device \"eth1\""));
        assert_eq!(b.matches("policy drop").count(), 2);
        assert!(silent_cut_body("eth1\"; flush ruleset").is_err());
    }

    #[test]
    fn json_is_parsed() {
        let tables = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
            {"table": {"family": "inet", "name": "hagw_pin", "handle": 1}},
            {"table": {"family": "ip", "name": "nat", "handle": 2}}]}"#;
        assert_eq!(
            parse_tables(tables).expect("parse"),
            vec![
                (Family::Inet, "hagw_pin".to_string()),
                (Family::Ip, "nat".to_string())
            ]
        );
        let rules = r#"{"nftables": [{"metainfo": {}},
            {"rule": {"family": "inet", "table": "hagw", "chain": "pre", "handle": 4,
              "comment": "forward tcp 2201",
              "expr": [{"match": {}}, {"counter": {"packets": 3, "bytes": 180}}, {"dnat": {}}]}},
            {"rule": {"family": "inet", "table": "hagw", "chain": "pre", "handle": 5,
              "expr": [{"accept": null}]}}]}"#;
        assert_eq!(
            parse_counters(rules).expect("parse"),
            vec![RuleCounter {
                chain: "pre".into(),
                comment: Some("forward tcp 2201".into()),
                packets: 3,
                bytes: 180
            }]
        );
        assert!(parse_tables("not json").is_err());
        assert!(parse_tables("{}").is_err());
    }
}
