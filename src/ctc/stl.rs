//! libstdc++'s heap and sort algorithms (bits/stl_heap.h, bits/stl_algo.h), which
//! TensorFlow's Linux builds use, step for step: they decide the order of equal totals. The
//! comparator is TensorFlow's "greater", so the heaps keep their smallest entry first. The
//! bounds in the loops marked "guard" never bind for a strict weak order (totals are never
//! NaN); they only keep the port free of out-of-range indexing.

/// `std::__push_heap`.
pub(super) fn push_heap_hole<F: Fn(usize, usize) -> bool>(
    h: &mut [usize],
    mut hole: usize,
    top: usize,
    value: usize,
    gt: &F,
) {
    while hole > top {
        let parent = (hole - 1) / 2;
        if !gt(h[parent], value) {
            break;
        }
        h[hole] = h[parent];
        hole = parent;
    }
    h[hole] = value;
}

/// `std::__adjust_heap` on `h[..len]`.
pub(super) fn adjust_heap<F: Fn(usize, usize) -> bool>(
    h: &mut [usize],
    mut hole: usize,
    len: usize,
    value: usize,
    gt: &F,
) {
    let top = hole;
    let mut second = hole;
    let len_i = len as isize;
    while (second as isize) < (len_i - 1) / 2 {
        second = 2 * (second + 1);
        if gt(h[second], h[second - 1]) {
            second -= 1;
        }
        h[hole] = h[second];
        hole = second;
    }
    if len & 1 == 0 && second as isize == (len_i - 2) / 2 {
        second = 2 * (second + 1);
        h[hole] = h[second - 1];
        hole = second - 1;
    }
    push_heap_hole(h, hole, top, value, gt);
}

/// `std::__pop_heap(first, first + len, first + result)`.
pub(super) fn pop_heap_to<F: Fn(usize, usize) -> bool>(
    h: &mut [usize],
    len: usize,
    result: usize,
    gt: &F,
) {
    let value = h[result];
    h[result] = h[0];
    adjust_heap(h, 0, len, value, gt);
}

/// `std::pop_heap`.
pub(super) fn pop_heap<F: Fn(usize, usize) -> bool>(h: &mut [usize], gt: &F) {
    let n = h.len();
    if n > 1 {
        pop_heap_to(h, n - 1, n - 1, gt);
    }
}

/// `std::push_heap`.
pub(super) fn push_heap<F: Fn(usize, usize) -> bool>(h: &mut [usize], gt: &F) {
    let n = h.len();
    if n > 0 {
        let value = h[n - 1];
        push_heap_hole(h, n - 1, 0, value, gt);
    }
}

/// `std::make_heap`.
pub(super) fn make_heap<F: Fn(usize, usize) -> bool>(h: &mut [usize], gt: &F) {
    let n = h.len();
    if n < 2 {
        return;
    }
    let mut parent = (n - 2) / 2;
    loop {
        let value = h[parent];
        adjust_heap(h, parent, n, value, gt);
        if parent == 0 {
            return;
        }
        parent -= 1;
    }
}

/// `std::sort_heap`.
pub(super) fn sort_heap<F: Fn(usize, usize) -> bool>(h: &mut [usize], gt: &F) {
    let mut n = h.len();
    while n > 1 {
        n -= 1;
        pop_heap_to(h, n, n, gt);
    }
}

const S_THRESHOLD: usize = 16;

/// `std::sort` (introsort: median-of-three quicksort, heapsort past `2 * lg(n)` levels, a
/// final insertion sort).
pub(super) fn std_sort<F: Fn(usize, usize) -> bool>(v: &mut [usize], gt: &F) {
    let n = v.len();
    if n == 0 {
        return;
    }
    let lg = (usize::BITS - 1 - n.leading_zeros()) as usize;
    introsort_loop(v, 0, n, 2 * lg, gt);
    final_insertion_sort(v, gt);
}

fn introsort_loop<F: Fn(usize, usize) -> bool>(
    v: &mut [usize],
    first: usize,
    mut last: usize,
    mut depth_limit: usize,
    gt: &F,
) {
    while last - first > S_THRESHOLD {
        if depth_limit == 0 {
            // std::__partial_sort(first, last, last): __heap_select then __sort_heap
            make_heap(&mut v[first..last], gt);
            sort_heap(&mut v[first..last], gt);
            return;
        }
        depth_limit -= 1;
        let cut = unguarded_partition_pivot(v, first, last, gt);
        introsort_loop(v, cut, last, depth_limit, gt);
        last = cut;
    }
}

fn move_median_to_first<F: Fn(usize, usize) -> bool>(
    v: &mut [usize],
    result: usize,
    a: usize,
    b: usize,
    c: usize,
    gt: &F,
) {
    let pick = if gt(v[a], v[b]) {
        if gt(v[b], v[c]) {
            b
        } else if gt(v[a], v[c]) {
            c
        } else {
            a
        }
    } else if gt(v[a], v[c]) {
        a
    } else if gt(v[b], v[c]) {
        c
    } else {
        b
    };
    v.swap(result, pick);
}

fn unguarded_partition_pivot<F: Fn(usize, usize) -> bool>(
    v: &mut [usize],
    first: usize,
    last: usize,
    gt: &F,
) -> usize {
    let mid = first + (last - first) / 2;
    move_median_to_first(v, first, first + 1, mid, last - 1, gt);
    let pivot = first;
    let mut lo = first + 1;
    let mut hi = last;
    loop {
        while lo < last && gt(v[lo], v[pivot]) {
            lo += 1; // guard: lo < last
        }
        hi -= 1;
        while hi > first && gt(v[pivot], v[hi]) {
            hi -= 1; // guard: hi > first
        }
        if lo >= hi {
            return lo;
        }
        v.swap(lo, hi);
        lo += 1;
    }
}

/// `std::__unguarded_linear_insert`.
fn linear_insert<F: Fn(usize, usize) -> bool>(v: &mut [usize], mut last: usize, gt: &F) {
    let val = v[last];
    while last > 0 && gt(val, v[last - 1]) {
        // guard: last > 0
        v[last] = v[last - 1];
        last -= 1;
    }
    v[last] = val;
}

/// `std::__insertion_sort` on `v[first..last]`.
fn insertion_sort<F: Fn(usize, usize) -> bool>(v: &mut [usize], first: usize, last: usize, gt: &F) {
    if first == last {
        return;
    }
    for i in first + 1..last {
        if gt(v[i], v[first]) {
            let val = v[i];
            v.copy_within(first..i, first + 1);
            v[first] = val;
        } else {
            linear_insert(v, i, gt);
        }
    }
}

fn final_insertion_sort<F: Fn(usize, usize) -> bool>(v: &mut [usize], gt: &F) {
    let n = v.len();
    if n > S_THRESHOLD {
        insertion_sort(v, 0, S_THRESHOLD, gt);
        for i in S_THRESHOLD..n {
            linear_insert(v, i, gt);
        }
    } else {
        insertion_sort(v, 0, n, gt);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The libstdc++ port sorts like a sort (descending, every entry kept), including with
    /// ties and past the insertion-sort threshold and the depth limit.
    #[test]
    fn std_sort_and_heaps_sort() {
        let mut state = 12345u64;
        for n in [0usize, 1, 2, 3, 15, 16, 17, 40, 100, 300] {
            for distinct in [1u64, 3, 1000] {
                let keys: Vec<f32> = (0..n)
                    .map(|_| {
                        state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
                        ((state >> 33) % distinct) as f32
                    })
                    .collect();
                let gt = |a: usize, b: usize| keys[a] > keys[b];
                let mut v: Vec<usize> = (0..n).collect();
                std_sort(&mut v, &gt);
                let mut w: Vec<usize> = (0..n).collect();
                make_heap(&mut w, &gt);
                sort_heap(&mut w, &gt);
                for s in [&v, &w] {
                    let mut seen = s.to_vec();
                    seen.sort_unstable();
                    assert_eq!(seen, (0..n).collect::<Vec<_>>());
                    assert!(s.windows(2).all(|p| keys[p[0]] >= keys[p[1]]));
                }
            }
        }
    }
}
