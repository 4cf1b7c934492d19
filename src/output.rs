//! Who reads stdout, decided once per run by one rule:
//!
//! * **a person** when stdout is a terminal, the process is not an ECS task (no
//!   `ECS_CONTAINER_METADATA_URI_V4`) and `--log-format json` was not asked for: `backup`,
//!   `restore` and `verify` print short human lines and `backup` a closing summary (one line
//!   per artifact: kind, database, size, ratio, duration, id; then totals and the verdict);
//! * **a machine** otherwise (ECS, pipes, files, `--log-format json`): the JSON lines,
//!   EMF records for CloudWatch included, exactly as before.
//!
//! Logs stay on stderr either way; only what stdout carries changes.

use std::io::IsTerminal;
use std::sync::OnceLock;

use crate::cli::LogFormat;
use crate::report::ArtifactReport;

static HUMAN: OnceLock<bool> = OnceLock::new();

/// The rule, from its three inputs.
pub fn decide(stdout_is_terminal: bool, in_ecs: bool, format: LogFormat) -> bool {
    stdout_is_terminal && !in_ecs && format != LogFormat::Json
}

/// Decides for this process (once, in `main`).
pub fn init(format: LogFormat) {
    let in_ecs = std::env::var_os("ECS_CONTAINER_METADATA_URI_V4").is_some_and(|v| !v.is_empty());
    let _ = HUMAN.set(decide(std::io::stdout().is_terminal(), in_ecs, format));
}

/// Whether stdout is for a person (false until [`init`]).
pub fn human() -> bool {
    HUMAN.get().copied().unwrap_or(false)
}

/// The short id `list` shows and `restore` accepts.
pub fn id(key: &str) -> String {
    crate::backup_ref::full(key)[..crate::backup_ref::SHORT].to_string()
}

/// Binary units, one decimal: what `ls -lh` users expect.
pub fn size(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// `0.4s`, `12.3s`, `4m 05s`, `1h 02m`.
pub fn duration(seconds: f64) -> String {
    let s = seconds.max(0.0);
    if s < 60.0 {
        format!("{s:.1}s")
    } else if s < 3600.0 {
        let s = s.round() as u64;
        format!("{}m {:02}s", s / 60, s % 60)
    } else {
        let m = (s / 60.0).round() as u64;
        format!("{}h {:02}m", m / 60, m % 60)
    }
}

/// raw / stored, e.g. `3.4x`; `-` when unknown.
pub fn ratio(raw: Option<u64>, stored: Option<u64>) -> String {
    match (raw, stored) {
        (Some(r), Some(s)) if s > 0 => format!("{:.1}x", r as f64 / s as f64),
        _ => "-".to_string(),
    }
}

/// `backup`'s closing summary: a line per artifact, the totals, and the verdict.
/// `unverified`: artifacts `--verify-into` found bad; `interrupted`: stopped by a signal.
/// `elapsed`: the run's wall time (artifacts run side by side).
pub fn backup_summary(
    stage: &str,
    reports: &[ArtifactReport],
    elapsed: f64,
    unverified: usize,
    interrupted: bool,
) -> String {
    let rows: Vec<[String; 7]> = reports
        .iter()
        .map(|r| {
            let (size, ratio) = if r.ok() {
                (
                    r.stored_bytes.map(size).unwrap_or_else(|| "-".into()),
                    ratio(r.raw_bytes, r.stored_bytes),
                )
            } else {
                ("-".into(), "-".into())
            };
            [
                if r.ok() { "ok" } else { r.status }.to_string(),
                r.kind.as_str().to_string(),
                r.database.clone(),
                size,
                ratio,
                duration(r.seconds),
                id(&r.key),
            ]
        })
        .collect();
    let mut widths = [0usize; 7];
    for row in &rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = format!("backup of stage {stage}:\n");
    for (row, r) in rows.iter().zip(reports) {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (c, w))| {
                // Sizes, ratios and durations line up on the right.
                if (3..=5).contains(&i) {
                    format!("{c:>w$}")
                } else {
                    format!("{c:<w$}")
                }
            })
            .collect();
        out.push_str(&format!("  {}\n", cells.join("  ").trim_end()));
        if let Some(e) = &r.error {
            out.push_str(&format!("      {e}\n"));
        }
    }
    let ok: Vec<&ArtifactReport> = reports.iter().filter(|r| r.ok()).collect();
    let stored: u64 = ok.iter().filter_map(|r| r.stored_bytes).sum();
    let raw: u64 = ok.iter().filter_map(|r| r.raw_bytes).sum();
    out.push_str(&format!(
        "total: {} stored from {} ({}) in {}\n",
        size(stored),
        size(raw),
        ratio(Some(raw), Some(stored)),
        duration(elapsed)
    ));
    // A skipped artifact (cluster roles under BACKUP_GLOBALS=auto) is warned about but does
    // not fail the run: the verdict agrees with the exit code.
    let failed = reports.iter().filter(|r| r.status == "failed").count();
    let skipped = reports.iter().filter(|r| r.status == "skipped").count();
    let verdict = if interrupted {
        format!(
            "INTERRUPTED: {} of {} backups finished",
            ok.len(),
            reports.len()
        )
    } else if failed > 0 || unverified > 0 {
        let mut v = format!("FAILED: {failed} of {} backups failed", reports.len());
        if unverified > 0 {
            v.push_str(&format!(", {unverified} failed verification"));
        }
        v
    } else if skipped > 0 {
        format!(
            "OK: {} of {} backups succeeded ({skipped} skipped: see its warning)",
            ok.len(),
            reports.len()
        )
    } else {
        format!("OK: {} of {} backups succeeded", ok.len(), reports.len())
    };
    out.push_str(&verdict);
    out.push('\n');
    out
}

/// `restore`'s line: what went where, how big, how long, whether the checksum was checked.
pub fn restore_line(
    key: &str,
    database: &str,
    stored: u64,
    raw: u64,
    seconds: f64,
    checksum_verified: bool,
) -> String {
    format!(
        "restored {} ({key}) into {database}: {} stored, {} raw, in {}; {}",
        id(key),
        size(stored),
        size(raw),
        duration(seconds),
        if checksum_verified {
            "checksum verified"
        } else {
            "no manifest: checksum not checked"
        }
    )
}

/// `verify`'s line per backup.
pub fn verify_line(key: &str, kind: &str, database: &str, ok: bool, error: Option<&str>) -> String {
    let mut line = format!(
        "{} {} {kind} {database} ({key})",
        if ok { "verified" } else { "FAILED  " },
        id(key)
    );
    if let Some(e) = error {
        line.push_str(&format!(": {e}"));
    }
    line
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes_are_human() {
        use super::size;
        assert_eq!(size(0), "0 B");
        assert_eq!(size(1023), "1023 B");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(5 << 30), "5.0 GiB");
    }

    use super::*;
    use crate::layout::Kind;

    #[test]
    fn the_rule() {
        assert!(decide(true, false, LogFormat::Auto));
        assert!(decide(true, false, LogFormat::Text));
        assert!(!decide(true, false, LogFormat::Json));
        assert!(!decide(true, true, LogFormat::Auto), "ECS");
        assert!(!decide(false, false, LogFormat::Text), "a pipe");
    }

    #[test]
    fn durations_and_ratios() {
        assert_eq!(duration(0.04), "0.0s");
        assert_eq!(duration(12.34), "12.3s");
        assert_eq!(duration(245.0), "4m 05s");
        assert_eq!(duration(3720.0), "1h 02m");
        assert_eq!(ratio(Some(340), Some(100)), "3.4x");
        assert_eq!(ratio(None, Some(1)), "-");
    }

    #[test]
    fn summary_has_a_line_per_artifact_totals_and_a_verdict() {
        let r = |db: &str, status: &'static str| ArtifactReport {
            event: "artifact",
            status,
            stage: "prod".into(),
            kind: Kind::Postgres,
            database: db.into(),
            key: format!(
                "prod/2024-01-01_00h00m00s_PGSQL/backup_prod_{db}_2024-01-01_00h00m00s.dump.zst"
            ),
            raw_bytes: (status == "ok").then_some(4096),
            stored_bytes: (status == "ok").then_some(1024),
            sha256: None,
            seconds: 1.25,
            error: (status != "ok").then(|| "pg_dump exited with 1".to_string()),
        };
        let s = backup_summary(
            "prod",
            &[r("app", "ok"), r("audit", "failed")],
            2.0,
            0,
            false,
        );
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(lines[0], "backup of stage prod:");
        assert!(
            lines[1].contains("app") && lines[1].contains("1.0 KiB") && lines[1].contains("4.0x"),
            "{s}"
        );
        assert!(lines[1].ends_with(&id(&r("app", "ok").key)), "{s}");
        assert!(lines[2].starts_with("  failed"), "{s}");
        assert!(lines[3].contains("pg_dump exited with 1"), "{s}");
        assert_eq!(
            lines[4],
            "total: 1.0 KiB stored from 4.0 KiB (4.0x) in 2.0s"
        );
        assert_eq!(lines[5], "FAILED: 1 of 2 backups failed");

        // Cluster roles skipped (BACKUP_GLOBALS=auto) exit 0: the verdict says OK too.
        let s = backup_summary(
            "prod",
            &[r("app", "ok"), r("globals", "skipped")],
            2.0,
            0,
            false,
        );
        assert_eq!(
            s.lines().last().unwrap(),
            "OK: 1 of 2 backups succeeded (1 skipped: see its warning)",
            "{s}"
        );
    }
}
