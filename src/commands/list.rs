//! `backhaul list`: the stage's backups, newest first, as a table or JSON lines.

use serde::Serialize;

use super::common::Store;
use super::restore::filter;
use crate::catalog::{self, Entry};
use crate::cli::ListArgs;

/// One listing row; the JSON form is the stable, scriptable one.
#[derive(Debug, Serialize)]
struct Row<'a> {
    key: &'a str,
    timestamp: &'a str,
    time: String,
    kind: &'static str,
    database: &'a str,
    size: u64,
    compression: Option<&'a str>,
    sha256: Option<&'a str>,
    /// yes / no / failed, or "no manifest" for objects written by the old script.
    verified: &'static str,
    manifest: bool,
}

fn row(e: &Entry) -> Row<'_> {
    let m = e.manifest.as_ref();
    Row {
        key: &e.key,
        timestamp: &e.parsed.timestamp,
        time: e.parsed.time.to_rfc3339(),
        kind: e.parsed.kind.as_str(),
        database: &e.parsed.database,
        size: e.size,
        compression: m.map(|m| m.compression.as_str()),
        sha256: m.map(|m| m.sha256.as_str()),
        verified: match (m.is_some(), e.verified()) {
            (false, _) => "no manifest",
            (true, None) => "no",
            (true, Some(true)) => "yes",
            (true, Some(false)) => "failed",
        },
        manifest: m.is_some(),
    }
}

pub async fn run(args: ListArgs) -> anyhow::Result<()> {
    let store = Store::resolve(&args.store)?;
    let filter = filter(args.kind.as_deref(), args.database.clone())?;
    let storage = store.open_existing().await?;
    let entries = catalog::load(
        &storage,
        &store.dest.key_prefix(),
        &store.stage,
        &store.zone,
        &filter,
    )
    .await?;
    let mut out = String::new();
    if args.json {
        for e in &entries {
            out.push_str(&serde_json::to_string(&row(e))?);
            out.push('\n');
        }
    } else {
        out = table(&entries);
    }
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    // A closed pipe (`| head`) is not an error worth a message.
    let _ = stdout.write_all(out.as_bytes());
    Ok(())
}

fn table(entries: &[Entry]) -> String {
    let header = [
        "TIMESTAMP",
        "KIND",
        "DATABASE",
        "SIZE",
        "COMPRESSION",
        "SHA256",
        "VERIFIED",
    ];
    let rows: Vec<[String; 7]> = entries
        .iter()
        .map(|e| {
            let r = row(e);
            [
                r.timestamp.to_string(),
                r.kind.to_string(),
                r.database.to_string(),
                human(r.size),
                r.compression.unwrap_or("-").to_string(),
                r.sha256
                    .map(|s| s.chars().take(12).collect())
                    .unwrap_or_else(|| "-".into()),
                r.verified.to_string(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[String]| {
        let s: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(s.join("  ").trim_end());
        out.push('\n');
    };
    line(&header.map(String::from));
    for r in &rows {
        line(r);
    }
    out
}

/// Binary units, one decimal: what `ls -lh` users expect.
pub fn human(n: u64) -> String {
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

#[cfg(test)]
mod tests {
    use super::human;

    #[test]
    fn sizes_are_human() {
        assert_eq!(human(0), "0 B");
        assert_eq!(human(1023), "1023 B");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(5 << 30), "5.0 GiB");
    }
}
