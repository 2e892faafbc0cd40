//! The guest's memory allocator on wasm, built for how weir runs a guest: every batch on a
//! fresh instance, whose memory is thrown away when the call returns.
//!
//! Most of a call's allocations are small and short-lived — the strings and value lists the
//! host lowers into the instance (one `cabi_realloc` each), the rows built from them, and
//! the lists the output is lowered into — and none outlives the call. So:
//!
//! - a block of up to [`LARGEST`] bytes (alignment up to [`ALIGN`]) comes from a size class
//!   (powers of two from [`SMALLEST`]): a freed block goes on its class's free list and is
//!   the next one that class hands out; a class with none free cuts a block from the
//!   current chunk, a bump pointer over pages taken from `memory.grow` [`CHUNK`] bytes at a
//!   time. Allocating and freeing are a few instructions each, and freed memory is reused,
//!   so a guest that allocates and frees in a loop runs in bounded memory.
//! - anything larger or more aligned goes to dlmalloc, a general-purpose allocator.
//!
//! Why not dlmalloc (or talc) for everything: `make bench` measured a 1000-message batch
//! of `passthrough` at 2.04 ms with dlmalloc, 1.80 ms with talc, 1.43 ms with an
//! allocator that never frees; size classes keep that speed without its unbounded growth.
//! The rounding up to a power of two costs at most half of each small block.
//!
//! wasm32-wasip2 guests are single-threaded (no atomics), so the allocator's state needs no
//! lock.

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use core::ptr;

/// The smallest size class, in bytes (holds the free list's link).
const SMALLEST: usize = 16;
/// The largest size class, in bytes; larger blocks go to dlmalloc.
const LARGEST: usize = 4096;
/// The alignment every size-class block has.
const ALIGN: usize = 16;
/// How much memory the bump pointer takes from `memory.grow` at a time.
const CHUNK: usize = 256 * 1024;
/// Number of size classes: 16, 32, …, 4096.
const CLASSES: usize = (LARGEST / SMALLEST).trailing_zeros() as usize + 1;
/// A WebAssembly page.
const PAGE: usize = 65536;

/// Size classes over a bump pointer, dlmalloc beyond them.
pub(crate) struct Allocator {
    state: UnsafeCell<State>,
    large: dlmalloc::GlobalDlmalloc,
}

struct State {
    /// Next free byte of the current chunk.
    next: usize,
    /// End of the current chunk.
    end: usize,
    /// Per class, the first freed block (each holds the address of the next), or null.
    free: [*mut u8; CLASSES],
}

// SAFETY: a wasm32-wasip2 guest has one thread; nothing shares the state.
unsafe impl Sync for Allocator {}

impl Allocator {
    /// The allocator, with no memory taken yet.
    pub(crate) const fn new() -> Self {
        Self {
            state: UnsafeCell::new(State {
                next: 0,
                end: 0,
                free: [ptr::null_mut(); CLASSES],
            }),
            large: dlmalloc::GlobalDlmalloc,
        }
    }
}

/// The size class of a block of `layout`, or none for dlmalloc's blocks.
fn class(layout: Layout) -> Option<usize> {
    if layout.size() > LARGEST || layout.align() > ALIGN {
        return None;
    }
    let size = layout.size().max(SMALLEST).next_power_of_two();
    Some((size / SMALLEST).trailing_zeros() as usize)
}

impl State {
    /// A block of class `class`: a freed one, else cut from the chunk.
    fn take(&mut self, class: usize) -> *mut u8 {
        let head = self.free[class];
        if !head.is_null() {
            // SAFETY: a freed block holds the address of the next freed block of its class.
            self.free[class] = unsafe { head.cast::<*mut u8>().read() };
            return head;
        }
        let size = SMALLEST << class;
        if self.end - self.next < size {
            let pages = CHUNK / PAGE;
            let first = core::arch::wasm32::memory_grow(0, pages);
            if first == usize::MAX {
                return ptr::null_mut();
            }
            // What is left of the old chunk is given up: less than one block.
            self.next = first * PAGE;
            self.end = self.next + CHUNK;
        }
        let block = self.next as *mut u8;
        self.next += size;
        block
    }

    /// Gives `block` of class `class` back, to be handed out next.
    fn give(&mut self, block: *mut u8, class: usize) {
        // SAFETY: the block is at least `SMALLEST` bytes, aligned to `ALIGN`, and no longer
        // the caller's.
        unsafe { block.cast::<*mut u8>().write(self.free[class]) };
        self.free[class] = block;
    }
}

unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match class(layout) {
            // SAFETY: single-threaded; no other reference to the state is live.
            Some(class) => unsafe { (*self.state.get()).take(class) },
            None => unsafe { self.large.alloc(layout) },
        }
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        match class(layout) {
            // SAFETY: as in `alloc`; the block was allocated with this layout.
            Some(class) => unsafe { (*self.state.get()).give(block, class) },
            None => unsafe { self.large.dealloc(block, layout) },
        }
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees a valid layout for `new_size`.
        let new = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (class(layout), class(new)) {
            // Still fits its block.
            (Some(old), Some(to)) if old == to => block,
            (None, None) => unsafe { self.large.realloc(block, layout, new_size) },
            _ => unsafe {
                let moved = self.alloc(new);
                if !moved.is_null() {
                    ptr::copy_nonoverlapping(block, moved, layout.size().min(new_size));
                    self.dealloc(block, layout);
                }
                moved
            },
        }
    }
}
