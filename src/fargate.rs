//! Fargate (Linux) task-size rules.
//!
//! Why this exists: ECS only rejects a bad cpu/memory pair when the task
//! definition is registered ("No Fargate configuration exists for given
//! values"), and moto does not reject it at all. Checking locally lets the CLI
//! fail before anything is created and tell the user which values would work.
//!
//! The table is the one in the ECS developer guide ("Task size" /
//! "Troubleshoot invalid CPU or memory errors") for Linux tasks. The 8 and 16
//! vCPU sizes need Linux platform version 1.4.0 or later, which is the
//! default (`LATEST`) platform, so they are accepted unconditionally. Windows
//! tasks have a narrower table and are not handled here.

use std::fmt;

/// Every Fargate task CPU size, in CPU units (1024 = 1 vCPU).
pub const CPU_SIZES: [u32; 7] = [256, 512, 1024, 2048, 4096, 8192, 16384];

/// Allowed memory for one CPU size. Most sizes are an arithmetic range; the
/// smallest one is a short list that is not (512, 1024, 2048), so both shapes
/// are kept to render the human-friendly description.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MemoryChoices {
    List(&'static [u32]),
    Range { min: u32, max: u32, step: u32 },
}

fn choices(cpu: u32) -> Option<MemoryChoices> {
    use MemoryChoices::*;
    Some(match cpu {
        256 => List(&[512, 1024, 2048]),
        512 => Range {
            min: 1024,
            max: 4096,
            step: 1024,
        },
        1024 => Range {
            min: 2048,
            max: 8192,
            step: 1024,
        },
        2048 => Range {
            min: 4096,
            max: 16384,
            step: 1024,
        },
        4096 => Range {
            min: 8192,
            max: 30720,
            step: 1024,
        },
        8192 => Range {
            min: 16384,
            max: 61440,
            step: 4096,
        },
        16384 => Range {
            min: 32768,
            max: 122880,
            step: 8192,
        },
        _ => return None,
    })
}

impl MemoryChoices {
    fn contains(self, memory: u32) -> bool {
        match self {
            MemoryChoices::List(values) => values.contains(&memory),
            MemoryChoices::Range { min, max, step } => {
                (min..=max).contains(&memory) && (memory - min).is_multiple_of(step)
            }
        }
    }

    #[cfg(test)]
    fn values(self) -> Vec<u32> {
        match self {
            MemoryChoices::List(values) => values.to_vec(),
            MemoryChoices::Range { min, max, step } => (min..=max).step_by(step as usize).collect(),
        }
    }
}

impl fmt::Display for MemoryChoices {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MemoryChoices::List(values) => f.write_str(&join_or(values)),
            MemoryChoices::Range { min, max, step } => {
                write!(f, "{min}-{max} in steps of {step}")
            }
        }
    }
}

/// "a, b or c" — reads naturally in a one-line CLI error.
fn join_or(values: &[u32]) -> String {
    match values {
        [] => String::new(),
        [only] => only.to_string(),
        [init @ .., last] => {
            let init: Vec<String> = init.iter().map(u32::to_string).collect();
            format!("{} or {last}", init.join(", "))
        }
    }
}

/// Messages name the CLI flags because this is what the user typed; the
/// integrating CLI must expose exactly `--cpu` and `--memory` (in MiB).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FargateError {
    #[error("--cpu {cpu} is not a Fargate size: choose {}", join_or(&CPU_SIZES))]
    UnknownCpu { cpu: u32 },
    #[error("--memory {memory_mib} is not valid with --cpu {cpu}: choose {}", describe_memory_for(*.cpu).unwrap_or_default())]
    MemoryNotValid { cpu: u32, memory_mib: u32 },
}

/// Checks a task-level cpu/memory pair (CPU units, MiB) against the Fargate
/// Linux table.
pub fn validate(cpu: u32, memory_mib: u32) -> Result<(), FargateError> {
    let choices = choices(cpu).ok_or(FargateError::UnknownCpu { cpu })?;
    if choices.contains(memory_mib) {
        Ok(())
    } else {
        Err(FargateError::MemoryNotValid { cpu, memory_mib })
    }
}

/// Every memory size (MiB, ascending) allowed with `cpu`, or `None` when `cpu`
/// is not a Fargate size. The first element is the smallest, which is a
/// sensible default when the user gives only `--cpu`.
#[cfg(test)]
pub fn valid_memory_for(cpu: u32) -> Option<Vec<u32>> {
    choices(cpu).map(MemoryChoices::values)
}

/// The allowed memory for `cpu` as a short phrase ("2048-8192 in steps of
/// 1024", "512, 1024 or 2048") for help text and errors.
pub fn describe_memory_for(cpu: u32) -> Option<String> {
    choices(cpu).map(|c| c.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (cpu, memory, valid?)
    const CASES: &[(u32, u32, bool)] = &[
        (256, 512, true),
        (256, 1024, true),
        (256, 2048, true),
        (256, 1536, false),
        (256, 3072, false),
        (256, 256, false),
        (512, 1024, true),
        (512, 3072, true),
        (512, 4096, true),
        (512, 512, false),
        (512, 5120, false),
        (512, 1536, false),
        (1024, 2048, true),
        (1024, 5120, true),
        (1024, 8192, true),
        (1024, 1024, false),
        (1024, 3000, false),
        (1024, 9216, false),
        (2048, 4096, true),
        (2048, 11264, true),
        (2048, 16384, true),
        (2048, 3072, false),
        (2048, 17408, false),
        (4096, 8192, true),
        (4096, 30720, true),
        (4096, 31744, false),
        (4096, 7168, false),
        (8192, 16384, true),
        (8192, 20480, true),
        (8192, 61440, true),
        (8192, 17408, false),
        (8192, 65536, false),
        (16384, 32768, true),
        (16384, 40960, true),
        (16384, 122880, true),
        (16384, 36864, false),
        (16384, 131072, false),
        (16384, 0, false),
    ];

    #[test]
    fn table() {
        for &(cpu, mem, ok) in CASES {
            assert_eq!(validate(cpu, mem).is_ok(), ok, "cpu {cpu} memory {mem}");
        }
    }

    #[test]
    fn unknown_cpu() {
        for cpu in [0, 128, 300, 1000, 3072, 32768, u32::MAX] {
            assert_eq!(
                validate(cpu, 2048),
                Err(FargateError::UnknownCpu { cpu }),
                "cpu {cpu}"
            );
            assert_eq!(valid_memory_for(cpu), None);
            assert_eq!(describe_memory_for(cpu), None);
        }
    }

    #[test]
    fn messages() {
        assert_eq!(
            validate(1024, 3000).unwrap_err().to_string(),
            "--memory 3000 is not valid with --cpu 1024: choose 2048-8192 in steps of 1024"
        );
        assert_eq!(
            validate(300, 1024).unwrap_err().to_string(),
            "--cpu 300 is not a Fargate size: choose 256, 512, 1024, 2048, 4096, 8192 or 16384"
        );
        assert_eq!(
            validate(256, 4096).unwrap_err().to_string(),
            "--memory 4096 is not valid with --cpu 256: choose 512, 1024 or 2048"
        );
        assert_eq!(
            validate(16384, 1).unwrap_err().to_string(),
            "--memory 1 is not valid with --cpu 16384: choose 32768-122880 in steps of 8192"
        );
    }

    #[test]
    fn valid_memory_lists() {
        let expect: &[(u32, Vec<u32>)] = &[
            (256, vec![512, 1024, 2048]),
            (512, vec![1024, 2048, 3072, 4096]),
            (1024, (2..=8).map(|g| g * 1024).collect()),
            (2048, (4..=16).map(|g| g * 1024).collect()),
            (4096, (8..=30).map(|g| g * 1024).collect()),
            (8192, (4..=15).map(|g| g * 4096).collect()),
            (16384, (4..=15).map(|g| g * 8192).collect()),
        ];
        for (cpu, want) in expect {
            assert_eq!(valid_memory_for(*cpu).as_ref(), Some(want), "cpu {cpu}");
        }
    }

    /// The list and the validator are two views of one table; exhaustively
    /// check they agree over every MiB value up to the largest size.
    #[test]
    fn list_and_validate_agree() {
        for cpu in CPU_SIZES {
            let list = valid_memory_for(cpu).unwrap();
            assert!(list.windows(2).all(|w| w[0] < w[1]));
            for mem in 0..=131_072 {
                assert_eq!(
                    validate(cpu, mem).is_ok(),
                    list.binary_search(&mem).is_ok(),
                    "cpu {cpu} memory {mem}"
                );
            }
        }
    }

    #[test]
    fn descriptions() {
        let got: Vec<String> = CPU_SIZES
            .iter()
            .map(|&c| format!("{c}: {}", describe_memory_for(c).unwrap()))
            .collect();
        assert_eq!(
            got,
            [
                "256: 512, 1024 or 2048",
                "512: 1024-4096 in steps of 1024",
                "1024: 2048-8192 in steps of 1024",
                "2048: 4096-16384 in steps of 1024",
                "4096: 8192-30720 in steps of 1024",
                "8192: 16384-61440 in steps of 4096",
                "16384: 32768-122880 in steps of 8192",
            ]
        );
    }
}
