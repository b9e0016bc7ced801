//! `--node-cpus`: the nodes on some CPUs, the generator and its clients on the others.
//!
//! On one machine the clients' work otherwise shares the node's cores: the node's CPU time per
//! packet then includes their cache and scheduler interference, which a node on a machine of
//! its own does not pay. The nodes are started through `taskset -c LIST`; this process (its
//! runtime threads are created later and inherit it) keeps to the CPUs not in the list.

use std::collections::BTreeSet;

use anyhow::{Context, bail};
use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
use nix::unistd::Pid;

/// The CPUs of a `taskset -c` style list: `0`, `0,2`, `1-3`, `0,2-3`.
pub fn parse_list(list: &str) -> anyhow::Result<BTreeSet<usize>> {
    let mut cpus = BTreeSet::new();
    for part in list.split(',') {
        let part = part.trim();
        let cpu = |s: &str| {
            s.trim().parse::<usize>().with_context(|| {
                format!("`{part}` in the CPU list `{list}` is not a CPU or a range")
            })
        };
        let (lo, hi) = match part.split_once('-') {
            Some((lo, hi)) => (cpu(lo)?, cpu(hi)?),
            None => {
                let c = cpu(part)?;
                (c, c)
            }
        };
        if lo > hi || hi >= CpuSet::count() {
            bail!("`{part}` in the CPU list `{list}` is not a range of CPUs");
        }
        cpus.extend(lo..=hi);
    }
    Ok(cpus)
}

/// Keeps this process off `node_cpus`, which must be CPUs it may run on, leaving it at least
/// one. Call before any other thread starts (threads inherit the mask of their creator).
pub fn keep_off(node_cpus: &BTreeSet<usize>) -> anyhow::Result<BTreeSet<usize>> {
    let allowed = sched_getaffinity(Pid::from_raw(0)).context("reading this process's CPUs")?;
    let usable: BTreeSet<usize> = (0..CpuSet::count())
        .filter(|&c| allowed.is_set(c).unwrap_or(false))
        .collect();
    let generator = split(&usable, node_cpus)?;
    let mut set = CpuSet::new();
    for &c in &generator {
        set.set(c).context("a CPU of the generator's set")?;
    }
    sched_setaffinity(Pid::from_raw(0), &set)
        .context("keeping the generator off the nodes' CPUs")?;
    Ok(generator)
}

/// The generator's CPUs: `usable` without `node_cpus`.
fn split(usable: &BTreeSet<usize>, node_cpus: &BTreeSet<usize>) -> anyhow::Result<BTreeSet<usize>> {
    if let Some(c) = node_cpus.iter().find(|c| !usable.contains(c)) {
        bail!("--node-cpus names CPU {c}, which this process may not use (usable: {usable:?})");
    }
    let generator: BTreeSet<usize> = usable.difference(node_cpus).copied().collect();
    if generator.is_empty() {
        bail!("--node-cpus leaves no CPU for the generator (usable: {usable:?})");
    }
    Ok(generator)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: &[usize]) -> BTreeSet<usize> {
        v.iter().copied().collect()
    }

    #[test]
    fn lists_are_read_as_taskset_reads_them() {
        assert_eq!(parse_list("0").expect("one"), set(&[0]));
        assert_eq!(parse_list("0,2").expect("two"), set(&[0, 2]));
        assert_eq!(parse_list("1-3").expect("range"), set(&[1, 2, 3]));
        assert_eq!(parse_list("0, 2-3").expect("both"), set(&[0, 2, 3]));
        for bad in ["", "a", "3-1", "1-", "-1", "0,,1", "100000"] {
            assert!(parse_list(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_generator_gets_the_other_cpus_and_at_least_one() {
        let usable = set(&[0, 1, 2, 3]);
        assert_eq!(split(&usable, &set(&[0])).expect("split"), set(&[1, 2, 3]));
        let e = split(&usable, &set(&[0, 1, 2, 3])).expect_err("none left");
        assert!(e.to_string().contains("no CPU for the generator"), "{e}");
        let e = split(&set(&[0, 1]), &set(&[5])).expect_err("not usable");
        assert!(e.to_string().contains("CPU 5"), "{e}");
    }
}
