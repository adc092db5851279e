//! TensorFlow's CTC beam search (`ctc::CTCBeamSearchDecoder<float>` with the default scorer,
//! `ctc_beam_search.h`, `ctc_beam_entry.h`) and its `gtl::TopN`, ported step by step so that
//! equal scores come out in TensorFlow's order.

use super::stl::*;

pub(super) const LOG_ZERO: f32 = f32::NEG_INFINITY;
pub(super) const NONE: usize = usize::MAX;

/// `ctc_beam_search::BeamProbability<float>`: log-probabilities of a prefix ending in a
/// blank, ending in its last label, and both.
#[derive(Debug, Clone, Copy)]
pub(super) struct Prob {
    total: f32,
    blank: f32,
    label: f32,
}

impl Prob {
    pub(super) const ZERO: Prob = Prob {
        total: LOG_ZERO,
        blank: LOG_ZERO,
        label: LOG_ZERO,
    };
}

/// `ctc_beam_search::BeamEntry`: a prefix, as its last label and its parent prefix.
#[derive(Debug, Clone)]
pub(super) struct Node {
    parent: usize,
    label: usize,
    /// Start of this node's `C - 1` child slots in `BeamDecoder::child_slots`, or `NONE`.
    children: usize,
    oldp: Prob,
    newp: Prob,
}

impl Node {
    fn active(&self) -> bool {
        self.newp.total != LOG_ZERO
    }
}

/// `ctc::LogSumExp` (`ctc_loss_util.h`), with `expf` and `log1pf`.
fn log_sum_exp(a: f32, b: f32) -> f32 {
    if a == LOG_ZERO {
        b
    } else if b == LOG_ZERO {
        a
    } else if a > b {
        a + (b - a).exp().ln_1p()
    } else {
        b + (a - b).exp().ln_1p()
    }
}

/// `ctc::CTCBeamSearchDecoder<float>` with the default scorer, no label selection, the blank
/// last, `merge_repeated = false`.
pub(super) struct BeamDecoder {
    classes: usize,
    beam_width: usize,
    nodes: Vec<Node>,
    child_slots: Vec<usize>,
    pub(super) leaves: TopN,
}

impl BeamDecoder {
    pub(super) fn new(classes: usize, beam_width: usize) -> Self {
        BeamDecoder {
            classes,
            beam_width,
            nodes: Vec::new(),
            child_slots: Vec::new(),
            leaves: TopN::new(beam_width),
        }
    }

    /// `Reset()`: a fresh tree whose root (the empty prefix) has probability 1.
    pub(super) fn reset(&mut self) {
        self.nodes.clear();
        self.child_slots.clear();
        self.nodes.push(Node {
            parent: NONE,
            label: NONE,
            children: NONE,
            oldp: Prob::ZERO,
            newp: Prob {
                total: 0.0,
                blank: 0.0,
                label: LOG_ZERO,
            },
        });
        self.leaves.reset();
        self.leaves.push(0, &self.nodes);
    }

    /// `BeamEntry::GetChild`: the child of `parent` for `label`, made when first asked for.
    fn child(&mut self, parent: usize, label: usize) -> usize {
        if self.nodes[parent].children == NONE {
            self.nodes[parent].children = self.child_slots.len();
            self.child_slots
                .extend(std::iter::repeat_n(NONE, self.classes - 1));
        }
        let slot = self.nodes[parent].children + label;
        if self.child_slots[slot] == NONE {
            self.child_slots[slot] = self.nodes.len();
            self.nodes.push(Node {
                parent,
                label,
                children: NONE,
                oldp: Prob::ZERO,
                newp: Prob::ZERO,
            });
        }
        self.child_slots[slot]
    }

    /// `is_candidate`: a probability that may enter the beam.
    fn is_candidate(&mut self, total: f32) -> bool {
        total > LOG_ZERO
            && (self.leaves.len() < self.beam_width || {
                let bottom = self.leaves.peek_bottom(&self.nodes);
                total > self.nodes[bottom].newp.total
            })
    }

    /// `Step()`: one time step; `row` has the blank last.
    pub(super) fn step(&mut self, row: &[f32]) {
        let blank = self.classes - 1;
        let max_coeff = row.iter().copied().fold(LOG_ZERO, f32::max);
        let mut logsumexp = 0.0f32;
        for &v in row {
            logsumexp += (v - max_coeff).exp();
        }
        let logsumexp = logsumexp.ln();
        let norm_offset = max_coeff + logsumexp;

        let branches = self.leaves.extract(&self.nodes);
        self.leaves.reset();
        for &b in &branches {
            self.nodes[b].oldp = self.nodes[b].newp;
        }

        for &b in &branches {
            let node = &self.nodes[b];
            let parent = node.parent;
            let label = node.label;
            let mut newp = node.newp;
            let oldp = node.oldp;
            if parent != NONE {
                let p = &self.nodes[parent];
                if p.active() {
                    let previous = if label == p.label {
                        p.oldp.blank
                    } else {
                        p.oldp.total
                    };
                    newp.label = log_sum_exp(newp.label, previous);
                }
                newp.label += row[label] - norm_offset;
            }
            newp.blank = oldp.total + row[blank] - norm_offset;
            newp.total = log_sum_exp(newp.blank, newp.label);
            self.nodes[b].newp = newp;
            self.leaves.push(b, &self.nodes);
        }

        for &b in &branches {
            if !self.is_candidate(self.nodes[b].oldp.total) {
                continue;
            }
            let b_label = self.nodes[b].label;
            let b_oldp = self.nodes[b].oldp;
            for (label, &logit) in row.iter().enumerate().take(blank) {
                let c = self.child(b, label);
                if self.nodes[c].active() {
                    continue;
                }
                let previous = if label == b_label {
                    b_oldp.blank
                } else {
                    b_oldp.total
                };
                let total = logit - norm_offset + previous;
                self.nodes[c].newp = Prob {
                    total,
                    blank: LOG_ZERO,
                    label: total,
                };
                if self.is_candidate(total) {
                    if self.leaves.len() == self.beam_width {
                        let bottom = self.leaves.peek_bottom(&self.nodes);
                        self.nodes[bottom].newp = Prob::ZERO;
                    }
                    self.leaves.push(c, &self.nodes);
                } else {
                    self.nodes[c].oldp = Prob::ZERO;
                    self.nodes[c].newp = Prob::ZERO;
                }
            }
        }
    }

    /// `TopPaths()`: the `n` best prefixes (labels with the blank last) and their
    /// log-probabilities, or `None` when the beam holds fewer than `n`.
    pub(super) fn top_paths(&self, n: usize) -> Option<Vec<(Vec<usize>, f32)>> {
        if n > self.leaves.len() {
            return None;
        }
        let mut top = TopN::new(n);
        for &e in &self.leaves.elements {
            top.push(e, &self.nodes);
        }
        let best = top.extract(&self.nodes);
        Some(
            best.into_iter()
                .take(n)
                .map(|e| (self.label_seq(e), self.nodes[e].newp.total))
                .collect(),
        )
    }

    /// `BeamEntry::LabelSeq(false)`.
    fn label_seq(&self, mut e: usize) -> Vec<usize> {
        let mut labels = Vec::new();
        while self.nodes[e].parent != NONE {
            labels.push(self.nodes[e].label);
            e = self.nodes[e].parent;
        }
        labels.reverse();
        labels
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TopNState {
    Unordered,
    BottomKnown,
    HeapSorted,
}

/// `tensorflow::gtl::TopN<BeamEntry*, BeamComparer>` (`tensorflow/core/lib/gtl/top_n.h`):
/// the `limit` entries with the largest `newp.total`, in TensorFlow's layout, so that equal
/// totals come out in TensorFlow's order. Entries are node indices; comparisons read the
/// nodes' current totals, as the pointers do in TensorFlow.
#[derive(Debug)]
pub(super) struct TopN {
    elements: Vec<usize>,
    limit: usize,
    state: TopNState,
}

impl TopN {
    fn new(limit: usize) -> Self {
        TopN {
            elements: Vec::new(),
            limit,
            state: TopNState::Unordered,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.elements.len()
    }

    pub(super) fn reset(&mut self) {
        self.elements.clear();
        self.state = TopNState::Unordered;
    }

    fn push(&mut self, v: usize, nodes: &[Node]) {
        let gt = |a: usize, b: usize| nodes[a].newp.total > nodes[b].newp.total;
        if self.limit == 0 {
            return;
        }
        if self.state != TopNState::HeapSorted {
            self.elements.push(v);
            let n = self.elements.len();
            if n > self.limit {
                make_heap(&mut self.elements, &gt);
                pop_heap(&mut self.elements, &gt);
                self.elements.pop();
                self.state = TopNState::HeapSorted;
            } else if self.state == TopNState::BottomKnown
                && !gt(self.elements[n - 1], self.elements[0])
            {
                // Keep the bottom at position 0: the new entry goes there, the old bottom last.
                self.elements.swap(0, n - 1);
            }
        } else if gt(v, self.elements[0]) {
            pop_heap(&mut self.elements, &gt);
            let n = self.elements.len();
            self.elements[n - 1] = v;
            push_heap(&mut self.elements, &gt);
        }
    }

    /// The lowest entry (the container must not be empty).
    fn peek_bottom(&mut self, nodes: &[Node]) -> usize {
        let gt = |a: usize, b: usize| nodes[a].newp.total > nodes[b].newp.total;
        if self.state == TopNState::Unordered {
            let mut min_candidate = 0;
            for i in 1..self.elements.len() {
                if gt(self.elements[min_candidate], self.elements[i]) {
                    min_candidate = i;
                }
            }
            if min_candidate != 0 {
                self.elements.swap(0, min_candidate);
            }
            self.state = TopNState::BottomKnown;
        }
        self.elements[0]
    }

    /// `Extract()`: the entries in descending order (`std::sort` or `std::sort_heap`).
    fn extract(&mut self, nodes: &[Node]) -> Vec<usize> {
        let gt = |a: usize, b: usize| nodes[a].newp.total > nodes[b].newp.total;
        let mut out = std::mem::take(&mut self.elements);
        if self.state != TopNState::HeapSorted {
            std_sort(&mut out, &gt);
        } else {
            sort_heap(&mut out, &gt);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `TopN` keeps the `limit` largest totals and extracts them in descending order.
    #[test]
    fn top_n_keeps_the_largest() {
        let totals = [0.5f32, -1.0, 3.0, 2.0, -0.5, 1.0];
        let nodes: Vec<Node> = totals
            .iter()
            .map(|&t| Node {
                parent: NONE,
                label: 0,
                children: NONE,
                oldp: Prob::ZERO,
                newp: Prob {
                    total: t,
                    blank: t,
                    label: LOG_ZERO,
                },
            })
            .collect();
        let mut top = TopN::new(3);
        for i in 0..nodes.len() {
            top.push(i, &nodes);
        }
        assert_eq!(top.len(), 3);
        assert_eq!(top.extract(&nodes), vec![2, 3, 5]);
    }
}
