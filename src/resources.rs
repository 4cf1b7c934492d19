//! What this process itself spent (CPU, page faults, memory), for the log line at the end of
//! a backup: the bench's CPU per GB of dump comes from it (issue 32). GNU time's figures
//! include pg_dump; these do not (`RUSAGE_SELF`: every thread of backhaul, no child).

/// This process's resource use so far.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Usage {
    pub user_s: f64,
    pub sys_s: f64,
    /// Page faults served without I/O: mostly memory touched for the first time.
    pub minor_faults: u64,
    pub major_faults: u64,
    pub max_rss_kib: u64,
}

impl Usage {
    pub fn of_self() -> Option<Usage> {
        // SAFETY: getrusage(2) fills the struct we pass; all-zero is a valid `rusage`.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
            return None;
        }
        let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        Some(Usage {
            user_s: secs(ru.ru_utime),
            sys_s: secs(ru.ru_stime),
            minor_faults: ru.ru_minflt as u64,
            major_faults: ru.ru_majflt as u64,
            max_rss_kib: ru.ru_maxrss as u64,
        })
    }

    /// Logs it (info, message `resources`) with the bytes it was spent on.
    pub fn log(&self, raw_bytes: u64, stored_bytes: u64) {
        let gb = raw_bytes as f64 / 1e9;
        let per_gb = if gb > 0.0 {
            (self.user_s + self.sys_s) / gb
        } else {
            0.0
        };
        tracing::info!(
            user_s = round3(self.user_s),
            sys_s = round3(self.sys_s),
            minor_faults = self.minor_faults,
            major_faults = self.major_faults,
            max_rss_kib = self.max_rss_kib,
            raw_bytes,
            stored_bytes,
            cpu_s_per_gb_raw = round3(per_gb),
            "resources"
        );
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_cpu_grows_with_work() {
        let before = Usage::of_self().unwrap();
        let mut x = 0u64;
        let t = std::time::Instant::now();
        while t.elapsed() < std::time::Duration::from_millis(50) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let after = Usage::of_self().unwrap();
        assert!(after.user_s + after.sys_s > before.user_s + before.sys_s);
        assert!(after.max_rss_kib > 0);
    }
}
