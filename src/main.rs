//! Entry point: parse the command line, set up logging and signals, run the command, and turn
//! its outcome into an exit code (0 ok, 1 failed, 2 bad configuration or usage, 128+N signal).

mod aws;
mod backup_ref;
mod catalog;
mod cleanup;
mod cli;
mod cmdline;
mod commands;
mod config;
mod crypto;
mod fargate;
mod globals;
mod layout;
mod logging;
mod manifest;
mod output;
mod percent;
mod private_fs;
mod progress;
mod provenance;
mod read_path;
mod report;
mod resources;
mod retention;
mod schedule_expr;
mod secret;
mod short_help;
mod source;
mod storage;
mod write_path;

use std::process::ExitCode;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::FromArgMatches;
use tokio_util::sync::CancellationToken;

use cli::{Cli, Command};
use commands::{Interrupted, Reported, Runtime};

/// See `run`: time allowed after a signal to abort uploads before the process gives up.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

fn main() -> ExitCode {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let cmd = short_help::command(&argv);
    let parsed = cmd
        .clone()
        .try_get_matches_from(argv)
        .and_then(|m| Ok((Cli::from_arg_matches(&m)?, m)));
    let (cli, matches) = match parsed {
        Ok(p) => p,
        Err(e) => return usage_error(&cmd, e),
    };
    let provenance = provenance::Provenance::from_matches(&cmd, &matches);
    let url_warnings = cmdline::hide_url_passwords(&cmd, &matches);
    if let Err(e) = logging::init(cli.log_format, &cli.log) {
        return config_error(&e, &provenance);
    }
    output::init(cli.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(run(cli, provenance, url_warnings))
}

async fn run(cli: Cli, provenance: provenance::Provenance, url_warnings: Vec<String>) -> ExitCode {
    let cancel = CancellationToken::new();
    let signal = Arc::new(AtomicI32::new(0));
    tokio::spawn(watch_signals(cancel.clone(), signal.clone()));
    let rt = Runtime {
        cancel: cancel.clone(),
    };
    // What a killed run left (dumps, spools) goes before this run adds its own; `status`
    // sweeps itself, to report what it cannot remove.
    let work_dir = match &cli.command {
        Command::Backup(a) => a.mongo.work_dir.as_deref(),
        Command::Restore(a) => a.mongo.work_dir.as_deref(),
        Command::Verify(a) => a.mongo.work_dir.as_deref(),
        _ => None,
    };
    if !matches!(cli.command, Command::Status(_)) {
        private_fs::sweep_and_log(&private_fs::temp_dirs(work_dir));
    }
    // A block of its own: the command, if still running after the grace, is dropped (its
    // children killed, its uploads aborted) before main waits for that clean-up below.
    let result = {
        let work = async move {
            match cli.command {
                Command::Backup(a) => commands::backup::run(a, rt).await,
                Command::Restore(a) => commands::restore::run(a, rt).await,
                Command::RestoreGlobals(a) => commands::restore::globals::run(a).await,
                Command::List(a) => commands::list::run(a).await,
                Command::Verify(a) => commands::verify::run(a, rt).await,
                Command::Prune(a) => commands::prune::run(a).await,
                Command::Schedule(a) => commands::schedule::run(a).await,
                Command::Unschedule(a) => commands::schedule::unschedule(a).await,
                Command::RunTask(a) => commands::run_task::run(a).await,
                Command::Status(a) => commands::status::run(a).await,
                Command::Logs(a) => commands::logs::run(a).await,
            }
        };
        tokio::pin!(work);
        tokio::select! {
            r = &mut work => r,
            _ = cancel.cancelled() => {
                // Give the command a bounded time to stop children and abort uploads: long enough
                // for an abort on a slow or throttled S3, well inside ECS's stopTimeout (120 s)
                // before SIGKILL; dropping it afterwards still kills children.
                match tokio::time::timeout(SHUTDOWN_GRACE, &mut work).await {
                    Ok(r) => r,
                    Err(_) => Err(Interrupted.into()),
                }
            }
        }
    };
    cleanup::finish(Duration::from_secs(5)).await;
    // Said at the end (the password is blanked from the start), so that a configuration
    // error stays the only line of a refused run.
    let refused = matches!(&result, Err(e) if e.chain().any(|c| c.is::<config::ConfigError>()));
    if !refused {
        for w in &url_warnings {
            tracing::warn!("{w}");
        }
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => exit_code(&e, signal.load(Ordering::SeqCst), &provenance),
    }
}

/// Help and version go to stdout with exit 0; usage errors become one line on stderr with
/// exit 2, like every other configuration error: clap's message, its suggestion ("did you
/// mean"), the variable when the bad value came from the environment, and the command whose
/// `--help` explains the setting.
fn usage_error(cmd: &clap::Command, e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = e.print();
        return if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
            ExitCode::from(2)
        } else {
            ExitCode::SUCCESS
        };
    }
    let argv: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    eprintln!("{}", one_line(&provenance::usage_line(cmd, &e, &argv)));
    ExitCode::from(2)
}

/// A configuration error: exit 2, named as the user gave it (the flag if typed, the
/// variable if set).
fn config_error(c: &config::ConfigError, provenance: &provenance::Provenance) -> ExitCode {
    eprintln!(
        "error: {}",
        one_line(&provenance.rewrite(&c.var, &c.to_string()))
    );
    ExitCode::from(2)
}

/// Errors are one line on stderr whatever a value held: control characters are escaped.
fn one_line(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.trim_end().chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

fn exit_code(e: &anyhow::Error, signal: i32, provenance: &provenance::Provenance) -> ExitCode {
    if e.downcast_ref::<Interrupted>().is_some() || signal != 0 {
        tracing::error!(signal, "stopped by signal; uploads aborted");
        return ExitCode::from(128 + signal.clamp(0, 127) as u8);
    }
    if let Some(t) = e.downcast_ref::<commands::run_task::TaskFailed>() {
        eprintln!("error: {t}");
        return ExitCode::from(t.code);
    }
    if let Some(r) = e.downcast_ref::<Reported>() {
        // A failure is never silent, even with logging turned off (BACKHAUL_LOG=off).
        if tracing::enabled!(tracing::Level::ERROR) {
            tracing::error!("{r}");
        } else {
            eprintln!("error: {}", one_line(&r.to_string()));
        }
        return ExitCode::from(1);
    }
    // Configuration errors are written by us and never quote a secret (their hints show the
    // expected URL shape, which redaction would mangle); anything else may quote a URL.
    if let Some(c) = e
        .chain()
        .find_map(|c| c.downcast_ref::<config::ConfigError>())
    {
        // Named as the user gave it: the flag if typed, the variable if set.
        eprintln!(
            "error: {}",
            one_line(&provenance.rewrite(&c.var, &format!("{e:#}")))
        );
        ExitCode::from(2)
    } else {
        eprintln!(
            "error: {}",
            one_line(&secret::redact_urls(&format!("{e:#}")))
        );
        ExitCode::from(1)
    }
}

async fn watch_signals(cancel: CancellationToken, which: Arc<AtomicI32>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return;
    };
    let n = tokio::select! {
        _ = term.recv() => libc::SIGTERM,
        _ = int.recv() => libc::SIGINT,
    };
    which.store(n, Ordering::SeqCst);
    tracing::warn!(
        signal = n,
        "signal received: stopping children and aborting uploads"
    );
    cancel.cancel();
}
