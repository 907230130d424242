//! The pool of recycled matrix buffers, in a process of its own (the pool is
//! per process, so other tests running beside these would move its
//! contents): buffers set aside by `prefault` are backed by memory before
//! any job touches them, any block up to their size is served from them,
//! and each comes back whole.

use septet_common::matrix::{alloc_uninit, pooled_bytes, prefault, recycle};

const MIB: usize = 1 << 20;

/// This process's resident memory, in bytes (Linux).
#[cfg(target_os = "linux")]
fn resident() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<usize>().unwrap() * 1024
}

/// One test, so nothing else in this process uses the pool meanwhile.
#[test]
fn prefaulted_buffers_serve_every_block_that_fits_and_come_back_whole() {
    // Three 4 MiB buffers: the blocks of one product of a 2048×2048 f32 job.
    let len = 1024 * 1024;
    assert_eq!(pooled_bytes::<f32>(), 0);

    #[cfg(target_os = "linux")]
    let before = resident();
    assert_eq!(prefault::<f32>(len, 3), 3);
    assert_eq!(pooled_bytes::<f32>(), 3 * 4 * MIB);
    // Backed by memory now, not when a job first writes them.
    #[cfg(target_os = "linux")]
    assert!(resident() >= before + 3 * 4 * MIB * 9 / 10, "{} → {} bytes resident", before, resident());

    // A smaller block (a job's odd-sized quadrant) takes one whole buffer...
    let mut a = alloc_uninit::<f32>((1000, 1001));
    assert_eq!(a.dim(), (1000, 1001));
    assert_eq!(pooled_bytes::<f32>(), 2 * 4 * MIB);
    // ... whose every element it may write, and which goes back whole.
    a.fill(2.5);
    assert!(a.iter().all(|&v| v == 2.5));
    recycle(a);
    assert_eq!(pooled_bytes::<f32>(), 3 * 4 * MIB);

    // A block larger than any pooled buffer is fresh and leaves the pool alone.
    let big = alloc_uninit::<f32>((1024, 2048));
    assert_eq!(pooled_bytes::<f32>(), 3 * 4 * MIB);
    recycle(big);
    assert_eq!(pooled_bytes::<f32>(), 3 * 4 * MIB + 8 * MIB);

    // The smallest buffer that fits is the one taken: the 8 MiB one stays
    // for a block that needs it.
    let blocks: Vec<_> = (0..3).map(|_| alloc_uninit::<f32>((1024, 1024))).collect();
    assert_eq!(pooled_bytes::<f32>(), 8 * MIB);
    let large = alloc_uninit::<f32>((1500, 1300));
    assert_eq!(pooled_bytes::<f32>(), 0);
    blocks.into_iter().chain([large]).for_each(recycle);
    assert_eq!(pooled_bytes::<f32>(), 3 * 4 * MIB + 8 * MIB);

    // Under 1 MiB nothing is pooled, so nothing is set aside; and the f64
    // pool is a pool of its own.
    assert_eq!(prefault::<f32>(1000, 3), 0);
    assert_eq!(pooled_bytes::<f64>(), 0);
}
