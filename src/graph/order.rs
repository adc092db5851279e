//! The order in which Keras 3 runs a functional model's calls (`keras.src.ops.function`:
//! `map_graph` numbers each node's depth from the outputs, and `_run_through_graph` runs the
//! depths deepest first, each depth's nodes in the order `map_graph` first reached them).
//! Inference does not depend on it; training does where a call changes its layer's state
//! (a BatchNormalization called twice in a step moves its moving statistics once per call,
//! in this order).

use super::{Graph, TensorRef};

/// A vertex of the graph: a call (index into `Graph::nodes`) or an input layer.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Vertex {
    Call(usize),
    Input(usize),
}

impl Graph {
    /// The calls in Keras's run order, or None where that order would read a tensor before
    /// it exists or leave a call out (the caller keeps its own order, which is valid).
    pub(super) fn keras_order(&self) -> Option<Vec<usize>> {
        let n = self.nodes.len();
        let vertex_of = |t: &TensorRef| -> Option<Vertex> {
            if let Some(k) = self
                .nodes
                .iter()
                .position(|c| c.layer == t.0 && c.call == t.1)
            {
                return Some(Vertex::Call(k));
            }
            self.inputs
                .iter()
                .position(|i| i.name == t.0)
                .map(Vertex::Input)
        };
        let id = |v: Vertex| match v {
            Vertex::Call(k) => k,
            Vertex::Input(i) => n + i,
        };
        let total = n + self.inputs.len();
        // (a node's parents: the producers of the tensors it reads, in Keras's flattened
        // argument order: the positional tensors, then the keyword ones by name,
        // initial_state before mask)
        let mut parents: Vec<Vec<Vertex>> = vec![Vec::new(); total];
        for (k, c) in self.nodes.iter().enumerate() {
            for t in c.inputs.iter().chain(&c.states).chain(c.mask.iter()) {
                parents[k].push(vertex_of(t)?);
            }
        }
        // _build_map: a depth-first walk from each output, each node after its parents
        let mut decreasing: Vec<Vertex> = Vec::new();
        let mut finished = vec![false; total];
        let mut in_progress = vec![false; total];
        fn visit(
            v: Vertex,
            id: &dyn Fn(Vertex) -> usize,
            parents: &[Vec<Vertex>],
            finished: &mut [bool],
            in_progress: &mut [bool],
            out: &mut Vec<Vertex>,
        ) -> Option<()> {
            let i = id(v);
            if finished[i] {
                return Some(());
            }
            if in_progress[i] {
                // (a cycle: Keras refuses it; the caller's order check reports it)
                return None;
            }
            in_progress[i] = true;
            for &p in &parents[i] {
                visit(p, id, parents, finished, in_progress, out)?;
            }
            in_progress[i] = false;
            finished[i] = true;
            out.push(v);
            Some(())
        }
        for (_, t) in &self.outputs {
            let v = vertex_of(t)?;
            visit(
                v,
                &id,
                &parents,
                &mut finished,
                &mut in_progress,
                &mut decreasing,
            )?;
        }
        // map_graph's depths: from the outputs back, a shared layer's later nodes at least
        // as deep as its earlier ones; the dict's insertion order breaks ties
        let mut depth: Vec<Option<usize>> = vec![None; total];
        let mut inserted: Vec<usize> = Vec::new();
        let mut layer_depth: std::collections::HashMap<&str, usize> = Default::default();
        let layer_of = |v: Vertex| -> &str {
            match v {
                Vertex::Call(k) => &self.nodes[k].layer,
                Vertex::Input(i) => &self.inputs[i].name,
            }
        };
        for &v in decreasing.iter().rev() {
            let i = id(v);
            let d = match depth[i] {
                Some(d) => d,
                None => {
                    inserted.push(i);
                    0
                }
            };
            let d = d.max(layer_depth.get(layer_of(v)).copied().unwrap_or(0));
            layer_depth.insert(layer_of(v), d);
            depth[i] = Some(d);
            for &p in &parents[i] {
                let j = id(p);
                if !finished[j] {
                    continue;
                }
                match depth[j] {
                    Some(old) => depth[j] = Some(old.max(d + 1)),
                    None => {
                        inserted.push(j);
                        depth[j] = Some(d + 1);
                    }
                }
            }
        }
        let mut order: Vec<(usize, usize, usize)> = inserted
            .iter()
            .enumerate()
            .filter(|&(_, &i)| i < n)
            .map(|(rank, &i)| (depth[i].unwrap_or(0), rank, i))
            .collect();
        order.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        let order: Vec<usize> = order.into_iter().map(|(_, _, i)| i).collect();
        // (valid: every call once, each after the calls it reads)
        if order.len() != n {
            return None;
        }
        let mut done = vec![false; n];
        for &k in &order {
            let ready = parents[k].iter().all(|&p| match p {
                Vertex::Call(j) => done[j],
                Vertex::Input(_) => true,
            });
            if !ready {
                return None;
            }
            done[k] = true;
        }
        Some(order)
    }
}
