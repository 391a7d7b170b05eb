//! Internal decoders never allocate without bound: a message whose length
//! prefixes claim billions of elements or bytes is refused after allocating
//! little, measured with a counting global allocator (this test binary's
//! own, so nothing else runs beside it).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use dynakv::transport::wire::{self, AeCompare, AeReply, BatchOp, HintRequest, TransferReply};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size(), Ordering::SeqCst) + layout.size();
        PEAK.fetch_max(live, Ordering::SeqCst);
        // SAFETY: forwarded to the system allocator with the same layout.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::SeqCst);
        // SAFETY: forwarded to the system allocator with the same layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn varint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
    out
}

/// Peak bytes allocated (beyond what was live before) while `f` runs.
fn peak_of(f: impl FnOnce()) -> usize {
    let base = LIVE.load(Ordering::SeqCst);
    PEAK.store(base, Ordering::SeqCst);
    f();
    PEAK.load(Ordering::SeqCst) - base
}

#[test]
fn huge_length_prefixes_are_refused_without_huge_allocations() {
    for claim in [u64::from(u32::MAX), 1 << 40, u64::MAX >> 1] {
        // A batch claiming `claim` operations, then a few bytes.
        let mut batch = vec![wire::FORMAT];
        batch.extend(varint(claim));
        batch.extend_from_slice(&[0, 1, b'k']);
        // A hint whose owner string claims `claim` bytes.
        let mut hint = vec![wire::FORMAT];
        hint.extend(varint(claim));
        hint.extend_from_slice(b"abc");
        // Tree comparisons and transfer pages claiming huge lists.
        let mut ae = vec![wire::FORMAT];
        ae.extend(varint(claim));
        let mut reply = vec![wire::FORMAT, 1];
        reply.extend(varint(claim));
        let mut page = vec![wire::FORMAT, 1, 1];
        page.extend(varint(claim));
        let peak = peak_of(|| {
            assert!(wire::decode::<Vec<BatchOp>>(&batch).is_none());
            assert!(wire::decode::<HintRequest>(&hint).is_none());
            assert!(wire::decode::<AeCompare>(&ae).is_none());
            assert!(wire::decode::<AeReply>(&reply).is_none());
            assert!(wire::decode::<TransferReply>(&page).is_none());
        });
        assert!(peak < 4 << 20, "claiming {claim} elements allocated {peak} bytes");
    }
}
