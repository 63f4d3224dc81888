//! Latency against throughput, one line per system through its `seq` and `cN` points, as a
//! self-contained SVG (no plotting crate: a few dozen elements).

use std::fmt::Write;

use crate::run::{Figure, Report};

const W: f64 = 720.0;
const H: f64 = 440.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 30.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 60.0;

/// (label, records/s, p50 ms, p99 ms) of one throughput workload.
type Point = (String, f64, f64, f64);
type Points = Vec<Point>;

fn points(r: &Report, etcd: bool) -> Points {
    r.rows
        .iter()
        .filter_map(|row| {
            let m = if etcd {
                row.etcd.as_ref()?
            } else {
                &row.conclave
            };
            match &m.figure {
                Figure::Throughput(t) => t
                    .latency
                    .as_ref()
                    .map(|l| (row.workload.clone(), t.records_per_sec, l.p50_ms, l.p99_ms)),
                _ => None,
            }
        })
        .collect()
}

/// A round number ≥ `x` for an axis end: 1, 2 or 5 times a power of ten.
fn nice(x: f64) -> f64 {
    if x <= 0.0 {
        return 1.0;
    }
    let p = 10f64.powf(x.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * p)
        .find(|v| *v >= x)
        .unwrap_or(10.0 * p)
}

/// The SVG, or `None` when the report has no throughput figures.
pub fn svg(r: &Report) -> Option<String> {
    let series: Vec<(&str, &str, Points)> = [
        ("Conclave", "#1f77b4", points(r, false)),
        ("etcd", "#d62728", points(r, true)),
    ]
    .into_iter()
    .filter(|(_, _, p)| !p.is_empty())
    .collect();
    if series.is_empty() {
        return None;
    }
    let max_x = nice(
        series
            .iter()
            .flat_map(|s| s.2.iter().map(|p| p.1))
            .fold(0.0, f64::max),
    );
    let max_y = nice(
        series
            .iter()
            .flat_map(|s| s.2.iter().map(|p| p.3))
            .fold(0.0, f64::max),
    );
    let px = |x: f64| LEFT + x / max_x * (W - LEFT - RIGHT);
    let py = |y: f64| H - BOTTOM - y / max_y * (H - TOP - BOTTOM);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15">Commit latency against throughput ({}-byte records, {} members, fsync before acknowledging)</text>"#,
        W / 2.0,
        r.record_bytes,
        r.peers
    );
    for i in 0..=5 {
        let x = max_x * i as f64 / 5.0;
        let y = max_y * i as f64 / 5.0;
        let _ = writeln!(
            s,
            r##"<line x1="{0}" y1="{1}" x2="{0}" y2="{2}" stroke="#ddd"/><text x="{0}" y="{3}" text-anchor="middle">{4}</text>"##,
            px(x),
            TOP,
            H - BOTTOM,
            H - BOTTOM + 18.0,
            x.round()
        );
        let _ = writeln!(
            s,
            r##"<line x1="{0}" y1="{1}" x2="{2}" y2="{1}" stroke="#ddd"/><text x="{3}" y="{4}" text-anchor="end">{5}</text>"##,
            LEFT,
            py(y),
            W - RIGHT,
            LEFT - 6.0,
            py(y) + 4.0,
            (y * 100.0).round() / 100.0
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">acknowledged records per second</text>"#,
        (LEFT + W - RIGHT) / 2.0,
        H - 18.0
    );
    let _ = writeln!(
        s,
        r#"<text x="18" y="{}" text-anchor="middle" transform="rotate(-90 18 {})">latency, ms (solid p50, dashed p99)</text>"#,
        (TOP + H - BOTTOM) / 2.0,
        (TOP + H - BOTTOM) / 2.0
    );
    for (k, (name, colour, pts)) in series.iter().enumerate() {
        let line = |f: &dyn Fn(&Point) -> f64| {
            pts.iter()
                .map(|p| format!("{:.1},{:.1}", px(p.1), py(f(p))))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let _ = writeln!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2"/>"#,
            line(&|p| p.2)
        );
        let _ = writeln!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="1.5" stroke-dasharray="5,4"/>"#,
            line(&|p| p.3)
        );
        for p in pts {
            let _ = writeln!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3.5" fill="{colour}"/><text x="{:.1}" y="{:.1}" fill="{colour}">{}</text>"#,
                px(p.1),
                py(p.2),
                px(p.1) + 6.0,
                py(p.2) - 6.0,
                p.0
            );
        }
        let ly = TOP + 10.0 + 18.0 * k as f64;
        let _ = writeln!(
            s,
            r#"<rect x="{}" y="{}" width="14" height="4" fill="{colour}"/><text x="{}" y="{}">{name}</text>"#,
            W - RIGHT - 110.0,
            ly - 4.0,
            W - RIGHT - 90.0,
            ly + 2.0
        );
    }
    s.push_str("</svg>\n");
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_ends_are_round() {
        assert_eq!(nice(0.0), 1.0);
        assert_eq!(nice(7.3), 10.0);
        assert_eq!(nice(1_234.0), 2_000.0);
        assert_eq!(nice(4_900.0), 5_000.0);
        assert_eq!(nice(0.42), 0.5);
    }
}
