//! The heap, the stacks, the code, the reference grammars and the SHA-256
//! implementation are made ready at start-up, so that the first request
//! after start-up does not pay for them.
//!
//! A page the process has never touched costs a page fault the first time
//! it is used: on a VM that hands free memory back to its host (free page
//! reporting), 5 to 12 µs for a page of heap. glibc keeps freed memory for
//! reuse, so later pulls write into pages the first one faulted in; the
//! first pull after start-up faulted in about 1,000 more pages than later
//! ones (`perf record -e page-faults`): each thread's new arena, and the
//! large buffers that glibc maps and unmaps on every use. The code a pull
//! runs for the first time is mapped page by page too, and so are the
//! pages deep in a runtime thread's stack where large futures are built.

use std::time::Duration;

/// How long an idle thread of tokio's blocking pool is kept: ten minutes,
/// not tokio's ten seconds, so that pulls minutes apart do not each start
/// their threads again (an idle thread costs only its stack).
const BLOCKING_KEEP_ALIVE: Duration = Duration::from_secs(600);

/// How much of each runtime thread's stack is faulted in when it starts:
/// a pull builds futures of tens of KiB on the stack of the worker that
/// spawns them, and the first pull faulted in about 15 pages there that
/// later ones found ready. Tokio's threads have 2 MiB of stack; every
/// thread, blocking ones too, pays this much resident memory.
const STACK_WARM: usize = 96 << 10;

/// The tokio runtime a process runs on, with two threads of its blocking
/// pool already started (redb's transactions and the unpacker run there),
/// and the top of each thread's stack faulted in.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_keep_alive(BLOCKING_KEEP_ALIVE)
        .on_thread_start(prepare_stack)
        .build()?;
    // Two tasks that overlap need two threads.
    for _ in 0..2 {
        runtime.spawn_blocking(|| std::thread::sleep(Duration::from_millis(5)));
    }
    Ok(runtime)
}

/// Writes [`STACK_WARM`] bytes of this thread's stack, below the caller's
/// frame, so that they are faulted in.
#[inline(never)]
fn prepare_stack() {
    let mut below = [0u8; STACK_WARM];
    std::hint::black_box(&mut below);
}

/// Maps the process's code, faults in `heap` bytes of heap, builds the
/// reference grammars and selects the SHA-256 implementation; see
/// [`prepare_heap`] and [`map_code`].
pub fn prepare(heap: usize) {
    prepare_heap(heap);
    map_code();
    imaged_model::reference::prepare();
    imaged_model::digest::prepare();
}

/// Sets up glibc's allocator and faults in `warm` bytes of heap ahead:
///
/// - one arena for every thread, so what was warmed here is what the
///   request threads allocate from (tokio's blocking threads and the
///   unpacker's come and go, and each new one could get a new arena);
/// - a fixed threshold of 4 MiB for serving an allocation with its own
///   `mmap` (the default starts at 128 KiB and moves, so a 1 MiB buffer is
///   mapped, faulted in and unmapped on every use until it moves);
/// - freed memory at the top of the heap is kept up to 64 MiB, so the
///   warmed pages stay.
fn prepare_heap(warm: usize) {
    // SAFETY: mallopt only sets allocator parameters; it is called before
    // any thread but this one exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
    }
    const PIECE: usize = 64 << 10;
    // Written (not zeroed, which calloc may skip on fresh pages) so that
    // every page is faulted in; freed together, they join the heap's top.
    let pieces: Vec<Vec<u8>> = (0..warm / PIECE).map(|_| vec![1u8; PIECE]).collect();
    std::hint::black_box(&pieces);
}

/// Maps every page of the executable's code now (`MADV_POPULATE_READ`,
/// Linux 5.14), instead of at the first call of each function; the file's
/// pages are in the page cache, since it was just started. Read-only data
/// is left to be mapped on use: its 6 MiB in transfer (unwind tables,
/// mostly) would count in every process's resident memory, for the few
/// pages of it a pull reads. Where the kernel is older, the pages are
/// mapped on use, as before.
fn map_code() {
    let Ok(exe) = std::fs::read_link("/proc/self/exe") else {
        return;
    };
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return;
    };
    for line in maps.lines() {
        // "start-end perms offset dev inode path"
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [range, perms, _, _, _, path] = fields[..] else {
            continue;
        };
        if !perms.contains('x') || std::path::Path::new(path) != exe {
            continue;
        }
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (
            usize::from_str_radix(start, 16),
            usize::from_str_radix(end, 16),
        ) else {
            continue;
        };
        // SAFETY: the range is a mapping of this process, as the kernel
        // listed it; populating it only maps its pages, it changes no
        // memory.
        unsafe {
            libc::madvise(
                start as *mut libc::c_void,
                end - start,
                libc::MADV_POPULATE_READ,
            );
        }
    }
}
