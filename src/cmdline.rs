//! Passwords typed into URL flags (`--to postgresql://u:pw@h/db`): one warning naming the
//! variable that keeps them out of the process list, and the password blanked in our own
//! command line, as the mysql client does.
//!
//! `ps` and `/proc/<pid>/cmdline` read the argv strings the kernel put on our stack, not
//! Rust's copies (`std::env::args` copies them at each call). glibc passes `(argc, argv,
//! envp)` to `.init_array` functions (std captures its own args the same way); we keep the
//! pointer and overwrite the password bytes in place once clap has parsed its copy. Nothing
//! reads the process's arguments after that. Other targets only get the warning.

use clap::parser::ValueSource;

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod raw {
    use std::ffi::c_char;
    use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

    static ARGC: AtomicUsize = AtomicUsize::new(0);
    static ARGV: AtomicPtr<*mut c_char> = AtomicPtr::new(std::ptr::null_mut());

    /// Run by glibc before main, with the arguments as the kernel laid them out.
    #[used]
    #[link_section = ".init_array.00099"]
    static CAPTURE: extern "C" fn(i32, *mut *mut c_char, *mut *mut c_char) = capture;

    extern "C" fn capture(argc: i32, argv: *mut *mut c_char, _envp: *mut *mut c_char) {
        ARGC.store(argc.max(0) as usize, Ordering::Relaxed);
        ARGV.store(argv, Ordering::Relaxed);
    }

    /// Overwrites every occurrence of `secret` in our argv strings with `x`; returns how many.
    pub fn blank(secret: &[u8]) -> usize {
        let argv = ARGV.load(Ordering::Relaxed);
        if secret.is_empty() || argv.is_null() {
            return 0;
        }
        let mut n = 0;
        for i in 0..ARGC.load(Ordering::Relaxed) {
            // SAFETY: glibc handed us argv with argc entries, each null or a NUL-terminated
            // string in writable memory that lives as long as the process; the bytes are only
            // overwritten in place (length and terminator unchanged), on the main thread
            // before any other reads them.
            let arg = unsafe {
                let p = *argv.add(i);
                if p.is_null() {
                    break;
                }
                std::slice::from_raw_parts_mut(p.cast::<u8>(), libc::strlen(p))
            };
            let mut at = 0;
            while at + secret.len() <= arg.len() {
                if &arg[at..at + secret.len()] == secret {
                    arg[at..at + secret.len()].fill(b'x');
                    n += 1;
                    at += secret.len();
                } else {
                    at += 1;
                }
            }
        }
        n
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod raw {
    pub fn blank(_secret: &[u8]) -> usize {
        0
    }
}

/// The password in a `scheme://user:password@host…` URL, or in a `password=` query parameter.
fn url_password(v: &str) -> Option<&str> {
    let rest = &v[v.find("://")? + 3..];
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    // The userinfo ends at the authority's last '@'; an unencoded '/' in the password moves
    // the apparent end, so fall back to the last '@' anywhere.
    let at = rest[..end]
        .rfind('@')
        .or_else(|| rest.rfind('@').filter(|at| !rest[..*at].contains('?')));
    if let Some((_, pw)) = at.and_then(|at| rest[..at].split_once(':')) {
        if !pw.is_empty() {
            return Some(pw);
        }
    }
    let query = &rest[rest.find('?')? + 1..];
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix("password="))
        .filter(|pw| !pw.is_empty())
}

/// Blanks every password typed in a URL in our argv (call after clap has parsed) and returns
/// one warning per URL flag that carried one, naming its variable. The caller logs them
/// unless the run ends on a configuration error, which stays the only line.
pub fn hide_url_passwords(cmd: &clap::Command, matches: &clap::ArgMatches) -> Vec<String> {
    let mut warnings = Vec::new();
    scan(cmd, matches, &mut warnings);
    if let Some((name, sub)) = matches.subcommand() {
        if let Some(sub_cmd) = cmd.find_subcommand(name) {
            scan(sub_cmd, sub, &mut warnings);
        }
    }
    warnings
}

/// A value that is itself a URL (`scheme://…`), not e.g. `--env KEY=postgresql://…`, which
/// has its own refusal.
fn is_url(v: &str) -> bool {
    v.split_once("://").is_some_and(|(scheme, _)| {
        !scheme.is_empty()
            && scheme
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"+.-".contains(&c))
    })
}

fn scan(cmd: &clap::Command, matches: &clap::ArgMatches, warnings: &mut Vec<String>) {
    for arg in cmd.get_arguments() {
        let id = arg.get_id().as_str();
        if matches.value_source(id) != Some(ValueSource::CommandLine) {
            continue;
        }
        let Ok(Some(values)) = matches.try_get_raw(id) else {
            continue;
        };
        let mut url_flag = false;
        for v in values.filter_map(|v| v.to_str()) {
            if let Some(pw) = url_password(v) {
                raw::blank(pw.as_bytes());
                url_flag |= is_url(v);
            }
        }
        if !url_flag {
            continue;
        }
        let flag = arg
            .get_long()
            .map(|l| format!("--{l}"))
            .unwrap_or_else(|| id.to_string());
        let instead = match arg.get_env() {
            Some(env) => format!("set {} instead", env.to_string_lossy()),
            None => "pass it through the environment instead".to_string(),
        };
        warnings.push(format!(
            "{flag} holds a password, which other local users can read in the process list until backhaul blanks it: {instead}"
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_found_in_urls() {
        for (url, pw) in [
            ("postgresql://app:p%40ss@db:5432/x", Some("p%40ss")),
            ("mongodb://u:pw@h1,h2/db?authSource=admin", Some("pw")),
            ("postgresql://app:pa/ss@db/x", Some("pa/ss")),
            (
                "postgresql://app@db/x?sslmode=require&password=q",
                Some("q"),
            ),
            ("postgresql://app@db/x", None),
            ("postgresql://app:@db/x", None),
            ("postgresql:///x?host=/run/pg", None),
            ("https://hc-ping.com/uuid", None),
            ("not a url", None),
            ("mongodb://h/db?x=u:p@q", None),
        ] {
            assert_eq!(url_password(url), pw, "{url}");
        }
        assert!(is_url("mongodb+srv://u:p@h/"));
        assert!(!is_url("DATABASE_URL=postgresql://u:p@h/d"));
    }

    /// The test binary's own argv is blanked where /proc shows it.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn blanked_in_proc_cmdline() {
        let before = std::fs::read("/proc/self/cmdline").unwrap();
        let argv0 = before.split(|b| *b == 0).next().unwrap().to_vec();
        let name = std::path::Path::new(std::str::from_utf8(&argv0).unwrap())
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .as_bytes()
            .to_vec();
        assert!(raw::blank(&name) >= 1);
        let after = std::fs::read("/proc/self/cmdline").unwrap();
        assert_eq!(after.len(), before.len());
        assert!(!after.windows(name.len()).any(|w| w == name));
        assert!(after
            .windows(name.len())
            .any(|w| w.iter().all(|b| *b == b'x')));
    }
}
