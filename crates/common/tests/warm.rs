//! The heap warmed at start-up is what later allocations use: writing
//! 4 MiB of new buffers after `warm::prepare` faults in almost no pages
//! (without it, about 1,000).

fn minor_faults() -> i64 {
    // SAFETY: getrusage writes only the struct it is given.
    unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage.ru_minflt
    }
}

#[test]
fn buffers_after_start_up_reuse_the_warmed_heap() {
    imaged_common::warm::prepare(8 << 20);
    let before = minor_faults();
    let buffers: Vec<Vec<u8>> = (0..64).map(|_| vec![1u8; 64 << 10]).collect();
    let faults = minor_faults() - before;
    std::hint::black_box(&buffers);
    assert!(
        faults < 200,
        "writing 4 MiB of new buffers faulted in {faults} pages"
    );
}
