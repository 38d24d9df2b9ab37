//! What is warmed at start-up is what later requests use: writing 4 MiB
//! of new buffers after `warm::prepare` faults in almost no pages (without
//! it, about 1,000), and neither does a deep stack on a runtime thread.

fn minor_faults(who: libc::c_int) -> i64 {
    // SAFETY: getrusage writes only the struct it is given.
    unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(who, &mut usage);
        usage.ru_minflt
    }
}

#[test]
fn buffers_after_start_up_reuse_the_warmed_heap() {
    imaged_common::warm::prepare(8 << 20);
    let before = minor_faults(libc::RUSAGE_SELF);
    let buffers: Vec<Vec<u8>> = (0..64).map(|_| vec![1u8; 64 << 10]).collect();
    let faults = minor_faults(libc::RUSAGE_SELF) - before;
    std::hint::black_box(&buffers);
    assert!(
        faults < 200,
        "writing 4 MiB of new buffers faulted in {faults} pages"
    );
}

/// 64 KiB of this thread's stack, written.
#[inline(never)]
fn deep_frame() {
    let mut frame = [1u8; 64 << 10];
    std::hint::black_box(&mut frame);
}

#[test]
fn a_deep_stack_on_a_runtime_thread_is_ready() {
    let runtime = imaged_common::warm::runtime().unwrap();
    let faults = runtime.block_on(async {
        tokio::spawn(async {
            let before = minor_faults(libc::RUSAGE_THREAD);
            deep_frame();
            minor_faults(libc::RUSAGE_THREAD) - before
        })
        .await
        .unwrap()
    });
    // Without the warming, 16 pages.
    assert!(faults < 4, "a 64 KiB frame faulted in {faults} pages");
}
