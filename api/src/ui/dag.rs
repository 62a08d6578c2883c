//! The plan as a DAG in SVG, drawn on the server: steps in columns by their longest path
//! from a root (so every edge points right), in plan order within a column, coloured by
//! status, each a link to its row in the steps table. Plans are capped (1,000 steps,
//! 10,000 edges), so the drawing is bounded; edges are left out past [`MAX_EDGES_DRAWN`].

use super::layout::status_class;
use aetheris_runtime::{JobState, StepSpec};
use maud::{html, Markup};
use std::collections::HashMap;

const NODE_W: i64 = 168;
const NODE_H: i64 = 34;
const COL_GAP: i64 = 56;
const ROW_GAP: i64 = 12;
const PAD: i64 = 8;
/// Beyond this many edges the drawing shows the steps only (the steps table has `needs`).
pub const MAX_EDGES_DRAWN: usize = 3_000;

/// Where each step goes: `(column, row)` per step in plan order.
pub fn layout(steps: &[StepSpec]) -> Vec<(usize, usize)> {
    let index: HashMap<&str, usize> = steps
        .iter()
        .enumerate()
        .map(|(i, s)| (s.id.as_str(), i))
        .collect();
    // Longest path from a root, by relaxation in plan order until nothing changes; a
    // validated plan is acyclic, and the pass bound keeps a corrupt one finite.
    let mut depth = vec![0usize; steps.len()];
    for _ in 0..steps.len().max(1) {
        let mut changed = false;
        for (i, s) in steps.iter().enumerate() {
            for n in &s.needs {
                if let Some(&j) = index.get(n.as_str()) {
                    if depth[j] + 1 > depth[i] {
                        depth[i] = depth[j] + 1;
                        changed = true;
                    }
                }
            }
        }
        if !changed {
            break;
        }
    }
    let mut rows_used: HashMap<usize, usize> = HashMap::new();
    depth
        .iter()
        .map(|&d| {
            let r = rows_used.entry(d).or_insert(0);
            let at = (d, *r);
            *r += 1;
            at
        })
        .collect()
}

/// What a step does, in a few words.
pub fn kind_label(s: &StepSpec) -> String {
    if let Some(t) = &s.tool {
        format!("tool {t}")
    } else if let Some(w) = &s.wait {
        format!("wait for {}", w.signal)
    } else if s.sleep.is_some() {
        "sleep".into()
    } else if let Some(a) = &s.agent {
        format!("agent {}", a.model)
    } else {
        String::new()
    }
}

/// The DAG of `state`'s plan with each step's status.
pub fn svg(state: &JobState) -> Markup {
    let steps = &state.plan.steps;
    let at = layout(steps);
    let cols = at.iter().map(|a| a.0 + 1).max().unwrap_or(1) as i64;
    let rows = at.iter().map(|a| a.1 + 1).max().unwrap_or(1) as i64;
    let width = PAD * 2 + cols * NODE_W + (cols - 1) * COL_GAP;
    let height = PAD * 2 + rows * NODE_H + (rows - 1) * ROW_GAP;
    let pos = |i: usize| {
        let (c, r) = at[i];
        (
            PAD + c as i64 * (NODE_W + COL_GAP),
            PAD + r as i64 * (NODE_H + ROW_GAP),
        )
    };
    let index: HashMap<&str, usize> = steps
        .iter()
        .enumerate()
        .map(|(i, s)| (s.id.as_str(), i))
        .collect();
    let edges: Vec<(usize, usize)> = steps
        .iter()
        .enumerate()
        .flat_map(|(i, s)| {
            s.needs
                .iter()
                .filter_map(|n| index.get(n.as_str()))
                .map(move |&j| (j, i))
        })
        .collect();
    let draw_edges = edges.len() <= MAX_EDGES_DRAWN;
    html! {
        div.scroll.dag {
            svg xmlns="http://www.w3.org/2000/svg" width=(width) height=(height)
                viewBox={ "0 0 " (width) " " (height) } role="img"
                aria-label={ "Plan with " (steps.len()) " steps; the steps table below lists them" } {
                @if draw_edges {
                    @for (from, to) in &edges {
                        @let (x1, y1) = pos(*from);
                        @let (x2, y2) = pos(*to);
                        @let (sx, sy, ex, ey) = (x1 + NODE_W, y1 + NODE_H / 2, x2, y2 + NODE_H / 2);
                        path.edge d={ "M" (sx) "," (sy) " C" (sx + COL_GAP / 2) "," (sy) " " (ex - COL_GAP / 2) "," (ey) " " (ex) "," (ey) } {}
                    }
                }
                @for (i, s) in steps.iter().enumerate() {
                    @let (x, y) = pos(i);
                    @let status = state.steps.get(&s.id).map(|st| super::job_page::display_status(state, st)).unwrap_or("pending");
                    a href={ "#step-" (i) } {
                        title { (s.id) " — " (kind_label(s)) " — " (status) }
                        rect class={ "node " (status_class(status)) } x=(x) y=(y) width=(NODE_W) height=(NODE_H) rx="5" {}
                        text.node-id x=(x + 8) y=(y + 14) { (crate::problem::clip(&s.id, 20)) }
                        text.node-kind x=(x + 8) y=(y + 27) { (crate::problem::clip(&kind_label(s), 22)) " · " (status.replace('_', " ")) }
                    }
                }
            }
        }
        @if !draw_edges {
            p.muted { (edges.len()) " dependencies are not drawn; each step's row lists them." }
        }
        ul.legend aria-label="Colours" {
            @for s in ["pending", "running", "waiting", "sleeping", "succeeded", "failed", "outcome_unknown", "cancelled"] {
                li { span class={ "swatch " (status_class(s)) } {} (s.replace('_', " ")) }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(id: &str, needs: &[&str]) -> StepSpec {
        serde_json::from_value(serde_json::json!({
            "id": id, "tool": "echo", "needs": needs
        }))
        .unwrap()
    }

    #[test]
    fn columns_follow_the_longest_path() {
        let steps = vec![
            step("a", &[]),
            step("b", &["a"]),
            step("c", &["a", "b"]),
            step("d", &[]),
        ];
        assert_eq!(layout(&steps), vec![(0, 0), (1, 0), (2, 0), (0, 1)]);
    }
}
