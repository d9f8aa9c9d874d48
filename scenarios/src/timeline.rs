//! A picture of one run: `dst replay CASE --html FILE` writes a single self-contained HTML
//! file (inline SVG, a little inline script, nothing fetched) with a lane per node and the
//! run's trace records as marks on the simulated time axis: writes, syncs, crashes, power
//! losses, restarts, recoveries, client sends, acknowledgements and reads, object-store
//! requests, fault windows, the coverage probes reached, and each violation, explained.
//! Wheel zooms around the pointer, dragging pans, hovering a mark shows its record.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use sim::{Fault, Outcome, ProbeHit, TraceRecord, Violation};

use crate::case::Case;

/// Lane of the coverage probes (they name no node).
const PROBE_LANE: &str = "probes";
const LABEL_W: f64 = 130.0;
const PLOT_W: f64 = 1150.0;
const LANE_H: f64 = 40.0;
const TOP: f64 = 28.0;

/// What a mark is: its CSS class, legend text, and its band inside the lane (top, height).
struct Style {
    class: &'static str,
    legend: &'static str,
    band: (f64, f64),
}

const STYLES: &[Style] = &[
    Style { class: "window", legend: "fault window", band: (2.0, 36.0) },
    Style { class: "down", legend: "node down", band: (2.0, 36.0) },
    Style { class: "write", legend: "write", band: (26.0, 10.0) },
    Style { class: "sync", legend: "sync", band: (14.0, 10.0) },
    Style { class: "fileop", legend: "file operation", band: (30.0, 6.0) },
    Style { class: "ioerror", legend: "I/O error / no space", band: (4.0, 32.0) },
    Style { class: "crash", legend: "crash", band: (2.0, 36.0) },
    Style { class: "powerloss", legend: "power loss", band: (2.0, 36.0) },
    Style { class: "fault", legend: "fault injected", band: (2.0, 12.0) },
    Style { class: "restart", legend: "restart / recovered", band: (2.0, 36.0) },
    Style { class: "stop", legend: "clean stop", band: (2.0, 36.0) },
    Style { class: "send", legend: "send", band: (4.0, 10.0) },
    Style { class: "ack", legend: "ack", band: (16.0, 10.0) },
    Style { class: "nack", legend: "failed / unanswered", band: (16.0, 10.0) },
    Style { class: "read", legend: "read", band: (28.0, 8.0) },
    Style { class: "upload", legend: "object-store request", band: (10.0, 20.0) },
    Style { class: "probe", legend: "coverage probe", band: (8.0, 24.0) },
    Style { class: "other", legend: "other", band: (32.0, 4.0) },
];

fn style(class: &str) -> &'static Style {
    STYLES.iter().find(|s| s.class == class).unwrap_or(&STYLES[STYLES.len() - 1])
}

/// The mark class of a trace record; `None` for records not drawn (the runner's verdicts are
/// drawn from the outcome's violations instead).
fn classify(r: &TraceRecord) -> Option<&'static str> {
    Some(match r.kind {
        "violation" => return None,
        "disk.write" => "write",
        "disk.sync" | "disk.sync_dir" => "sync",
        "disk.eio" | "disk.enospc" | "broker.open_failed" => "ioerror",
        "disk.crash" if r.detail.starts_with("kind=power-loss") => "powerloss",
        "disk.crash" | "node.shutdown-unfinished" => "crash",
        "fault" | "disk.bit_flip" | "clock.jump" | "partition.heal" => "fault",
        "node.restart" | "broker.recovered" => "restart",
        "node.stopped" | "broker.stopped" => "stop",
        "client.send" => "send",
        "client.reply" if r.detail.starts_with("acked=0 ") => "nack",
        "client.reply" => "ack",
        "client.read" => "read",
        k if k.starts_with("obj.") => "upload",
        k if k.starts_with("disk.") => "fileop",
        _ => "other",
    })
}

/// One mark: a point (`end_us == None`) or an interval.
struct Mark {
    lane: usize,
    t_us: u64,
    end_us: Option<u64>,
    class: &'static str,
    detail: String,
}

/// The lanes in display order: servers, then clients, the object store, the world, probes.
fn lanes(records: &[TraceRecord], probes: &[ProbeHit]) -> Vec<String> {
    let rank = |n: &str| match n {
        _ if n.starts_with("producer") || n.starts_with("consumer") || n.starts_with("client") => 1,
        "objstore" => 2,
        "world" => 3,
        PROBE_LANE => 4,
        _ => 0,
    };
    let mut names: Vec<String> = Vec::new();
    for r in records.iter().filter(|r| r.node != "runner") {
        if !names.contains(&r.node) {
            names.push(r.node.clone());
        }
    }
    if !probes.is_empty() {
        names.push(PROBE_LANE.to_string());
    }
    names.sort_by_key(|n| rank(n));
    names
}

fn seconds(t_us: u64) -> String {
    format!("{}.{:06} s", t_us / 1_000_000, t_us % 1_000_000)
}

/// The nodes a fault window covers and how long it lasts.
fn window(fault: &Fault) -> Option<(Vec<String>, u64)> {
    match fault {
        Fault::DiskErrors { node, duration_ms, .. } | Fault::DiskFull { node, duration_ms } => {
            Some((vec![node.clone()], *duration_ms))
        }
        Fault::Partition { a, b, duration_ms } => Some((vec![a.clone(), b.clone()], *duration_ms)),
        Fault::ObjectStoreErrors { duration_ms, .. } | Fault::ObjectStoreOutage { duration_ms } => {
            Some((vec!["objstore".to_string()], *duration_ms))
        }
        _ => None,
    }
}

fn marks(records: &[TraceRecord], probes: &[ProbeHit], lanes: &[String], end_us: u64) -> Vec<Mark> {
    let lane_of: BTreeMap<&str, usize> = lanes.iter().enumerate().map(|(i, n)| (n.as_str(), i)).collect();
    let mut out = Vec::new();
    let mut down_since: BTreeMap<usize, u64> = BTreeMap::new();
    for r in records {
        let Some(class) = classify(r) else { continue };
        let Some(&lane) = lane_of.get(r.node.as_str()) else { continue };
        let detail = format!("{} #{} {} {} {}", seconds(r.time_us), r.seq, r.node, r.kind, r.detail);
        match (r.kind, class) {
            ("disk.crash", _) | ("node.shutdown-unfinished", _) => {
                down_since.entry(lane).or_insert(r.time_us);
            }
            ("node.restart", _) => {
                if let Some(from) = down_since.remove(&lane) {
                    let detail = format!("{} down from {} to {}", r.node, seconds(from), seconds(r.time_us));
                    out.push(Mark { lane, t_us: from, end_us: Some(r.time_us), class: "down", detail });
                }
            }
            ("fault", _) => {
                if let Some((nodes, duration_ms)) =
                    serde_json::from_str::<Fault>(&r.detail).ok().and_then(|f| window(&f))
                {
                    for node in nodes {
                        if let Some(&lane) = lane_of.get(node.as_str()) {
                            let end = r.time_us + duration_ms * 1_000;
                            let detail =
                                format!("{} fault window until {}: {}", seconds(r.time_us), seconds(end), r.detail);
                            out.push(Mark { lane, t_us: r.time_us, end_us: Some(end), class: "window", detail });
                        }
                    }
                }
            }
            _ => {}
        }
        out.push(Mark { lane, t_us: r.time_us, end_us: None, class, detail });
    }
    for (lane, from) in down_since {
        let detail = format!("{} down from {} to the end of the run", lanes[lane], seconds(from));
        out.push(Mark { lane, t_us: from, end_us: Some(end_us), class: "down", detail });
    }
    if let Some(&lane) = lane_of.get(PROBE_LANE) {
        for p in probes {
            let detail = format!("{} probe {}", seconds(p.time_us), p.name);
            out.push(Mark { lane, t_us: p.time_us, end_us: None, class: "probe", detail });
        }
    }
    // Intervals first, so point marks are drawn over them.
    out.sort_by_key(|m| (m.end_us.is_none(), m.t_us));
    out
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

fn x_of(t_us: u64, end_us: u64) -> f64 {
    LABEL_W + t_us as f64 / end_us.max(1) as f64 * PLOT_W
}

/// Renders the run `outcome` of `case` (replayed with its trace and probes kept).
pub fn render_html(case: &Case, outcome: &Outcome) -> String {
    let records = &outcome.records;
    let end_us = records
        .iter()
        .map(|r| r.time_us)
        .chain(outcome.violations.iter().map(|v| v.at_ms * 1_000))
        .max()
        .unwrap_or(0)
        .max(1);
    let lanes = lanes(records, &outcome.probe_hits);
    let marks = marks(records, &outcome.probe_hits, &lanes, end_us);
    let height = TOP + LANE_H * lanes.len() as f64 + 30.0;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg id="tl" xmlns="http://www.w3.org/2000/svg" width="{w}" height="{height}" data-end="{end_us}" data-x0="{LABEL_W}" data-w="{PLOT_W}">"#,
        w = LABEL_W + PLOT_W + 10.0
    );
    let _ = write!(
        svg,
        r#"<defs><clipPath id="plot"><rect x="{LABEL_W}" y="0" width="{PLOT_W}" height="{height}"/></clipPath></defs>"#
    );
    for (i, name) in lanes.iter().enumerate() {
        let y = TOP + LANE_H * i as f64;
        let _ = write!(
            svg,
            r#"<g class="lane" data-node="{n}"><rect class="lane-bg" x="0" y="{y}" width="{w}" height="{LANE_H}"/><text class="lane-label" x="6" y="{ty}">{n}</text></g>"#,
            n = escape(name),
            w = LABEL_W + PLOT_W,
            ty = y + LANE_H / 2.0 + 4.0
        );
    }
    svg.push_str(r#"<g id="axis"></g><g id="marks" clip-path="url(#plot)">"#);
    for m in &marks {
        let s = style(m.class);
        let y = TOP + LANE_H * m.lane as f64 + s.band.0;
        let x = x_of(m.t_us, end_us);
        let (t2, width) = match m.end_us {
            Some(e) => (format!(r#" data-t2="{e}""#), (x_of(e, end_us) - x).max(1.0)),
            None => (String::new(), 2.0),
        };
        let _ = write!(
            svg,
            r#"<rect class="mark {c}" x="{x:.1}" y="{y}" width="{width:.1}" height="{h}" data-t="{t}"{t2} data-d="{d}"/>"#,
            c = m.class,
            h = s.band.1,
            t = m.t_us,
            d = escape(&m.detail)
        );
    }
    for (i, v) in outcome.violations.iter().enumerate() {
        let t = v.at_ms * 1_000;
        let id = if i == 0 { r#" id="violation""# } else { "" };
        let _ = write!(
            svg,
            r#"<rect{id} class="mark violation" x="{x:.1}" y="{TOP}" width="3" height="{h}" data-t="{t}" data-d="{d}"/>"#,
            x = x_of(t, end_us) - 1.5,
            h = LANE_H * lanes.len() as f64,
            d = escape(&format!("VIOLATION {v}"))
        );
    }
    svg.push_str("</g></svg>");
    page(case, outcome, &lanes, &svg, end_us)
}

fn explain(violations: &[Violation]) -> String {
    if violations.is_empty() {
        return r#"<div class="verdict pass">No violation: every checker passed.</div>"#.to_string();
    }
    let mut out = String::from(r#"<div class="verdict fail" id="violation-text"><b>Violation</b><ul>"#);
    for v in violations {
        let _ = write!(
            out,
            r#"<li><a href="" class="goto" data-t="{t}">[{c}] at {ms} ms</a>: {m}</li>"#,
            t = v.at_ms * 1_000,
            c = escape(&v.checker),
            ms = v.at_ms,
            m = escape(&v.message)
        );
    }
    out.push_str("</ul><small>The red line marks the moment the checker saw it; click to zoom there.</small></div>");
    out
}

fn legend() -> String {
    let mut out = String::from(r#"<div class="legend">"#);
    for s in STYLES.iter().chain(std::iter::once(&Style { class: "violation", legend: "violation", band: (0.0, 0.0) }))
    {
        let _ = write!(out, r#"<span><i class="sw {}"></i>{}</span>"#, s.class, s.legend);
    }
    out.push_str("</div>");
    out
}

fn page(case: &Case, outcome: &Outcome, lanes: &[String], svg: &str, end_us: u64) -> String {
    let bugs = if case.bugs.is_empty() {
        "none".to_string()
    } else {
        case.bugs.iter().cloned().collect::<Vec<_>>().join(", ")
    };
    let title = format!("{} seed {}", case.scenario, case.seed);
    let mut plan = String::new();
    for e in &case.plan.events {
        let _ = write!(plan, "<li>{} ms: {}</li>", e.at_ms, escape(&e.fault.to_string()));
    }
    format!(
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>dst: {title}</title>
<style>{CSS}</style></head><body>
<h1>{title}</h1>
<div class="meta">bugs on: {bugs} · simulated {sim} · {events} events · {lanes} lanes · trace hash {hash:016x}{note}</div>
{verdict}
<div class="controls"><button id="zin">zoom in</button><button id="zout">zoom out</button><button id="reset">whole run</button>
<span>wheel: zoom at the pointer · drag: pan · hover a mark for its record</span> <span id="range"></span></div>
<div id="wrap">{svg}<div id="tip"></div></div>
{legend}
<details><summary>fault plan ({n} events)</summary><ul>{plan}</ul></details>
<script>{JS}</script>
</body></html>
"#,
        title = escape(&title),
        bugs = escape(&bugs),
        sim = seconds(end_us),
        events = outcome.events,
        lanes = lanes.len(),
        hash = outcome.trace_hash,
        note = if case.note.is_empty() { String::new() } else { format!(" · {}", escape(&case.note)) },
        verdict = explain(&outcome.violations),
        legend = legend(),
        n = case.plan.events.len(),
    )
}

const CSS: &str = r#"
body{font:13px system-ui,sans-serif;margin:16px;color:#222;background:#fff}
h1{font-size:18px;margin:0 0 4px}
.meta{color:#555;margin-bottom:8px}
.verdict{padding:8px 12px;border-radius:4px;margin:8px 0;max-width:1270px}
.verdict.fail{background:#fde8e8;border:1px solid #e02424}
.verdict.pass{background:#e6f6ea;border:1px solid #31a354}
.verdict ul{margin:4px 0;padding-left:20px}
.controls{margin:6px 0}.controls span{color:#666;margin-left:8px}
#wrap{position:relative;user-select:none}
#tl{display:block;cursor:grab}
.lane-bg{fill:#fafafa;stroke:#ddd}
.lane:nth-child(odd) .lane-bg{fill:#f1f3f6}
.lane-label{font-weight:600;fill:#333}
.tick line{stroke:#ccc}.tick text{font-size:10px;fill:#666}
#tip{position:absolute;display:none;background:#222;color:#fff;padding:4px 6px;border-radius:3px;font:12px monospace;max-width:700px;pointer-events:none;white-space:pre-wrap;z-index:2}
.legend{margin:8px 0}.legend span{margin-right:12px;white-space:nowrap}
.sw{display:inline-block;width:12px;height:12px;margin-right:4px;vertical-align:-2px}
.write{fill:#4a90d9;background:#4a90d9}.sync{fill:#2ca25f;background:#2ca25f}
.fileop{fill:#9aa5b1;background:#9aa5b1}.other{fill:#c0c0c0;background:#c0c0c0}
.ioerror{fill:#f08c00;background:#f08c00}.crash{fill:#d62728;background:#d62728}
.powerloss{fill:#7b1fa2;background:#7b1fa2}.fault{fill:#e377c2;background:#e377c2}
.restart{fill:#17becf;background:#17becf}.stop{fill:#555;background:#555}
.send{fill:#8c6d31;background:#8c6d31}.ack{fill:#31a354;background:#31a354}
.nack{fill:#e6550d;background:#e6550d}.read{fill:#6baed6;background:#6baed6}
.upload{fill:#bcbd22;background:#bcbd22}.probe{fill:#393b79;background:#393b79}
.window{fill:#f7b6d2;opacity:.45;background:#f7b6d2}.down{fill:#ff9896;opacity:.45;background:#ff9896}
.violation{fill:#e00000;background:#e00000}
.mark:hover{stroke:#000;stroke-width:1}
"#;

const JS: &str = r#"
(function(){
const svg=document.getElementById('tl'),tip=document.getElementById('tip');
const END=+svg.dataset.end,X0=+svg.dataset.x0,W=+svg.dataset.w,H=+svg.getAttribute('height');
const marks=[...svg.querySelectorAll('.mark')];
let v0=0,v1=END;
const x=t=>X0+(t-v0)/(v1-v0)*W;
const fmt=us=>(us/1e6).toFixed(us<1e7&&(v1-v0)<2e6?6:3)+' s';
function axis(){
  const g=document.getElementById('axis');g.innerHTML='';
  const span=v1-v0,raw=span/8,p=Math.pow(10,Math.floor(Math.log10(raw)));
  const step=[1,2,5,10].map(m=>m*p).find(s=>s>=raw)||raw;
  for(let t=Math.ceil(v0/step)*step;t<=v1;t+=step){
    const e=document.createElementNS('http://www.w3.org/2000/svg','g');e.setAttribute('class','tick');
    e.innerHTML='<line x1="'+x(t)+'" x2="'+x(t)+'" y1="20" y2="'+(H-24)+'"/><text x="'+(x(t)+2)+'" y="14">'+fmt(t)+'</text>';
    g.appendChild(e);
  }
  document.getElementById('range').textContent='showing '+fmt(v0)+' to '+fmt(v1);
}
function layout(){
  for(const e of marks){
    const t=+e.dataset.t;
    if(e.dataset.t2!==undefined){
      const a=x(t),b=x(+e.dataset.t2);e.setAttribute('x',a);e.setAttribute('width',Math.max(b-a,1));
    }else{e.setAttribute('x',x(t)-(e.classList.contains('violation')?1.5:1));}
  }
  axis();
}
function zoom(f,at){const c=at===undefined?(v0+v1)/2:at;let n0=c-(c-v0)*f,n1=c+(v1-c)*f;
  if(n1-n0<50){return}if(n0<0){n1-=n0;n0=0}if(n1>END){n0-=n1-END;n1=END}v0=Math.max(0,n0);v1=Math.min(END,n1);layout();}
function tAt(ev){const r=svg.getBoundingClientRect();return v0+(ev.clientX-r.left-X0)/W*(v1-v0);}
svg.addEventListener('wheel',ev=>{ev.preventDefault();zoom(ev.deltaY<0?0.8:1.25,tAt(ev));},{passive:false});
let drag=null;
svg.addEventListener('mousedown',ev=>{drag={x:ev.clientX,v0,v1}});
window.addEventListener('mouseup',()=>{drag=null});
window.addEventListener('mousemove',ev=>{if(!drag)return;const dt=(ev.clientX-drag.x)/W*(drag.v1-drag.v0);
  let n0=drag.v0-dt,n1=drag.v1-dt;if(n0<0){n1-=n0;n0=0}if(n1>END){n0-=n1-END;n1=END}v0=n0;v1=n1;layout();});
svg.addEventListener('mouseover',ev=>{const d=ev.target.dataset&&ev.target.dataset.d;if(!d)return;tip.textContent=d;tip.style.display='block';});
svg.addEventListener('mousemove',ev=>{const r=document.getElementById('wrap').getBoundingClientRect();tip.style.left=(ev.clientX-r.left+12)+'px';tip.style.top=(ev.clientY-r.top+12)+'px';});
svg.addEventListener('mouseout',()=>{tip.style.display='none'});
document.getElementById('zin').onclick=()=>zoom(0.5);
document.getElementById('zout').onclick=()=>zoom(2);
document.getElementById('reset').onclick=()=>{v0=0;v1=END;layout()};
for(const a of document.querySelectorAll('.goto'))a.onclick=ev=>{ev.preventDefault();const t=+a.dataset.t,s=Math.max(END/20,1000);
  v0=Math.max(0,t-s);v1=Math.min(END,t+s);layout();};
layout();
})();
"#;

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seq: u64, time_us: u64, node: &str, kind: &'static str, detail: &str) -> TraceRecord {
        TraceRecord { seq, time_us, node: node.into(), kind, detail: detail.into() }
    }

    #[test]
    fn crashes_become_down_windows_and_fault_windows_cover_their_nodes() {
        let records = vec![
            record(1, 0, "broker", "node.create", ""),
            record(2, 0, "producer-1", "node.create", ""),
            record(3, 1_000, "broker", "disk.write", "/f off=0 len=4"),
            record(4, 2_000, "broker", "fault", r#"{"fault":"disk-full","node":"broker","duration_ms":5}"#),
            record(5, 3_000, "broker", "disk.crash", "kind=power-loss generation=1"),
            record(6, 9_000, "broker", "node.restart", ""),
            record(7, 9_500, "producer-1", "client.reply", "acked=0 failed=1 unknown=0"),
        ];
        let lanes = lanes(&records, &[]);
        assert_eq!(lanes, ["broker", "producer-1"]);
        let marks = marks(&records, &[], &lanes, 10_000);
        let classes: Vec<_> = marks.iter().map(|m| m.class).collect();
        assert!(classes.contains(&"powerloss") && classes.contains(&"write") && classes.contains(&"nack"));
        let down = marks.iter().find(|m| m.class == "down").expect("a down window");
        assert_eq!((down.t_us, down.end_us), (3_000, Some(9_000)));
        let window = marks.iter().find(|m| m.class == "window").expect("a fault window");
        assert_eq!((window.lane, window.t_us, window.end_us), (0, 2_000, Some(7_000)));
    }

    #[test]
    fn text_is_escaped() {
        assert_eq!(escape(r#"<a href="x">&'"#), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
    }
}
