//! Dependency-free SVG plots for run directories: loss curves, ROC curves per
//! fold, and a bar chart of per-region importance. Each data series is one
//! `<path>`, each bar one `<rect class="bar">`; axes and gridlines are
//! `<line>`s. Non-finite values (and non-positive ones on a log axis) are
//! left out, so no `NaN` ever reaches the file.

use std::fmt::Write as _;

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 420.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 170.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;
const PALETTE: [&str; 10] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf",
];

/// A named line of (x, y) points.
#[derive(Debug, Clone, Copy)]
pub struct Series<'a> {
    pub label: &'a str,
    pub points: &'a [(f64, f64)],
}

/// One fold's ROC curve (from `metrics::roc_curve`) and its AUC (a fraction).
#[derive(Debug, Clone)]
pub struct RocCurve {
    pub label: String,
    pub points: Vec<(f64, f64)>,
    pub auc: f64,
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// Short tick label: no trailing zeros, exponent form for very small/large.
fn tick_label(v: f64) -> String {
    if v == 0.0 {
        return "0".to_string();
    }
    let a = v.abs();
    if !(1e-3..1e5).contains(&a) {
        return format!("{v:.0e}");
    }
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// About five round tick values covering [lo, hi].
fn nice_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let span = (hi - lo).max(1e-12);
    let raw = span / 5.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|s| span / s <= 6.0)
        .unwrap_or(10.0 * magnitude);
    let mut ticks = Vec::new();
    let mut t = (lo / step).ceil() * step;
    while t <= hi + step * 1e-9 && ticks.len() < 20 {
        ticks.push(if t.abs() < step * 1e-9 { 0.0 } else { t });
        t += step;
    }
    ticks
}

struct Frame {
    x: (f64, f64),
    y: (f64, f64),
    log_y: bool,
}

impl Frame {
    fn px(&self, x: f64) -> f64 {
        LEFT + (x - self.x.0) / (self.x.1 - self.x.0) * (WIDTH - LEFT - RIGHT)
    }
    fn py(&self, y: f64) -> f64 {
        let (v, lo, hi) = if self.log_y {
            (y.log10(), self.y.0.log10(), self.y.1.log10())
        } else {
            (y, self.y.0, self.y.1)
        };
        TOP + (1.0 - (v - lo) / (hi - lo)) * (HEIGHT - TOP - BOTTOM)
    }
}

fn header(out: &mut String, title: &str) {
    let _ = write!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect x=\"0\" y=\"0\" width=\"{WIDTH}\" height=\"{HEIGHT}\" fill=\"white\"/>\n\
         <text x=\"{:.1}\" y=\"24\" text-anchor=\"middle\" font-size=\"15\">{}</text>\n",
        WIDTH / 2.0,
        escape(title)
    );
}

fn axes(out: &mut String, frame: &Frame, x_label: &str, y_label: &str) {
    let (x0, x1) = (LEFT, WIDTH - RIGHT);
    let (y0, y1) = (HEIGHT - BOTTOM, TOP);
    for t in nice_ticks(frame.x.0, frame.x.1) {
        let x = frame.px(t);
        let _ = writeln!(
            out,
            "<line x1=\"{x:.1}\" y1=\"{y0:.1}\" x2=\"{x:.1}\" y2=\"{y1:.1}\" stroke=\"#eee\"/>\n<text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            y0 + 16.0,
            tick_label(t)
        );
    }
    let y_ticks: Vec<f64> = if frame.log_y {
        let (lo, hi) = (
            frame.y.0.log10().floor() as i32,
            frame.y.1.log10().ceil() as i32,
        );
        (lo..=hi)
            .map(|e| 10f64.powi(e))
            .filter(|v| *v >= frame.y.0 * (1.0 - 1e-9) && *v <= frame.y.1 * (1.0 + 1e-9))
            .collect()
    } else {
        nice_ticks(frame.y.0, frame.y.1)
    };
    for t in y_ticks {
        let y = frame.py(t);
        let _ = writeln!(
            out,
            "<line x1=\"{x0:.1}\" y1=\"{y:.1}\" x2=\"{x1:.1}\" y2=\"{y:.1}\" stroke=\"#eee\"/>\n<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            x0 - 6.0,
            y + 4.0,
            tick_label(t)
        );
    }
    let _ = writeln!(
        out,
        "<line x1=\"{x0:.1}\" y1=\"{y0:.1}\" x2=\"{x1:.1}\" y2=\"{y0:.1}\" stroke=\"black\"/>\n\
         <line x1=\"{x0:.1}\" y1=\"{y0:.1}\" x2=\"{x0:.1}\" y2=\"{y1:.1}\" stroke=\"black\"/>\n\
         <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\n\
         <text x=\"16\" y=\"{:.1}\" text-anchor=\"middle\" transform=\"rotate(-90 16 {:.1})\">{}</text>",
        (x0 + x1) / 2.0,
        HEIGHT - 12.0,
        escape(x_label),
        (y0 + y1) / 2.0,
        (y0 + y1) / 2.0,
        escape(y_label)
    );
}

fn legend(out: &mut String, index: usize, label: &str) {
    let x = WIDTH - RIGHT + 12.0;
    let y = TOP + 10.0 + 18.0 * index as f64;
    let color = PALETTE[index % PALETTE.len()];
    let _ = writeln!(
        out,
        "<line x1=\"{x:.1}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"{color}\" stroke-width=\"2\"/>\n<text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
        x + 20.0,
        x + 26.0,
        y + 4.0,
        escape(label)
    );
}

fn polyline(out: &mut String, frame: &Frame, points: &[(f64, f64)], index: usize) {
    let mut d = String::new();
    for (k, (x, y)) in points.iter().enumerate() {
        let _ = write!(
            d,
            "{}{:.2},{:.2}",
            if k == 0 { "M" } else { " L" },
            frame.px(*x),
            frame.py(*y)
        );
    }
    let _ = writeln!(
        out,
        "<path class=\"series\" d=\"{d}\" fill=\"none\" stroke=\"{}\" stroke-width=\"1.5\"/>",
        PALETTE[index % PALETTE.len()]
    );
}

/// Loss (or any scalar) against step, one line per series; `log_y` puts the
/// y axis on a log scale (non-positive values are then left out).
pub fn loss_curve_svg(title: &str, series: &[Series<'_>], log_y: bool) -> String {
    let usable = |&(x, y): &(f64, f64)| x.is_finite() && y.is_finite() && (!log_y || y > 0.0);
    let kept: Vec<Vec<(f64, f64)>> = series
        .iter()
        .map(|s| s.points.iter().copied().filter(usable).collect())
        .collect();
    let all = kept.iter().flatten();
    let (mut x0, mut x1, mut y0, mut y1) = (
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::INFINITY,
        f64::NEG_INFINITY,
    );
    for &(x, y) in all {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if !x0.is_finite() {
        (x0, x1, y0, y1) = (0.0, 1.0, if log_y { 0.1 } else { 0.0 }, 1.0);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    if log_y {
        if y1 <= y0 {
            y1 = y0 * 10.0;
        }
        y0 = 10f64.powf(y0.log10().floor());
        y1 = 10f64.powf(y1.log10().ceil());
    } else if y1 <= y0 {
        y1 = y0 + 1.0;
    }
    let frame = Frame {
        x: (x0, x1),
        y: (y0, y1),
        log_y,
    };
    let mut out = String::new();
    header(&mut out, title);
    axes(
        &mut out,
        &frame,
        "step",
        if log_y { "loss (log scale)" } else { "loss" },
    );
    for (i, (s, points)) in series.iter().zip(&kept).enumerate() {
        if !points.is_empty() {
            polyline(&mut out, &frame, points, i);
        }
        legend(&mut out, i, s.label);
    }
    out.push_str("</svg>\n");
    out
}

/// ROC curves, one per fold, with the AUC in the legend and the chance diagonal.
pub fn roc_svg(title: &str, curves: &[RocCurve]) -> String {
    let frame = Frame {
        x: (0.0, 1.0),
        y: (0.0, 1.0),
        log_y: false,
    };
    let mut out = String::new();
    header(&mut out, title);
    axes(
        &mut out,
        &frame,
        "false-positive rate",
        "true-positive rate",
    );
    let _ = writeln!(
        out,
        "<line class=\"chance\" x1=\"{:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"#999\" stroke-dasharray=\"4 4\"/>",
        frame.px(0.0),
        frame.py(0.0),
        frame.px(1.0),
        frame.py(1.0)
    );
    for (i, curve) in curves.iter().enumerate() {
        let points: Vec<(f64, f64)> = curve
            .points
            .iter()
            .copied()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .collect();
        if !points.is_empty() {
            polyline(&mut out, &frame, &points, i);
        }
        let auc = if curve.auc.is_finite() {
            format!("AUC {:.3}", curve.auc)
        } else {
            "AUC n/a".to_string()
        };
        legend(&mut out, i, &format!("{} ({auc})", curve.label));
    }
    out.push_str("</svg>\n");
    out
}

/// Horizontal bars of the `top_k` regions by |value|, largest first, each
/// labelled with its name and value. Non-finite values are left out.
pub fn importance_svg(title: &str, names: &[String], values: &[f64], top_k: usize) -> String {
    let mut order: Vec<usize> = (0..names.len().min(values.len()))
        .filter(|&i| values[i].is_finite())
        .collect();
    order.sort_by(|&a, &b| values[b].abs().total_cmp(&values[a].abs()).then(a.cmp(&b)));
    order.truncate(top_k);
    let max = order
        .iter()
        .map(|&i| values[i].abs())
        .fold(0.0f64, f64::max)
        .max(1e-300);
    let row = 20.0;
    let height = TOP + BOTTOM + row * order.len().max(1) as f64;
    let (label_w, bar_w) = (150.0, WIDTH - 150.0 - 90.0);
    let mut out = String::new();
    let _ = write!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height}\" viewBox=\"0 0 {WIDTH} {height}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect x=\"0\" y=\"0\" width=\"{WIDTH}\" height=\"{height}\" fill=\"white\"/>\n\
         <text x=\"{:.1}\" y=\"24\" text-anchor=\"middle\" font-size=\"15\">{}</text>\n",
        WIDTH / 2.0,
        escape(title)
    );
    for (k, &i) in order.iter().enumerate() {
        let y = TOP + row * k as f64;
        let w = values[i].abs() / max * bar_w;
        let color = if values[i] >= 0.0 {
            PALETTE[0]
        } else {
            PALETTE[3]
        };
        let _ = writeln!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\n\
             <rect class=\"bar\" x=\"{label_w:.1}\" y=\"{:.1}\" width=\"{w:.2}\" height=\"{:.1}\" fill=\"{color}\"/>\n\
             <text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            label_w - 6.0,
            y + 14.0,
            escape(&names[i]),
            y + 3.0,
            row - 6.0,
            label_w + w + 4.0,
            y + 14.0,
            tick_label(values[i])
        );
    }
    out.push_str("</svg>\n");
    out
}

/// Diverging colour of v in [-1, 1]: blue (negative), white (0), red (positive).
fn diverging(v: f64) -> String {
    let v = if v.is_finite() {
        v.clamp(-1.0, 1.0)
    } else {
        0.0
    };
    let (r, g, b) = if v >= 0.0 {
        (255.0, 255.0 * (1.0 - v), 255.0 * (1.0 - v))
    } else {
        (255.0 * (1.0 + v), 255.0 * (1.0 + v), 255.0)
    };
    format!("#{:02x}{:02x}{:02x}", r as u8, g as u8, b as u8)
}

/// A heatmap: one row per named item (e.g. the top regions), one column per
/// labelled bin (e.g. a segment of frames), each cell a `<rect class="cell">`
/// coloured on a diverging scale symmetric about 0 (red = positive), its
/// value in a `<title>` for hover. Rows are drawn in the order given.
pub fn heatmap_svg(
    title: &str,
    row_names: &[String],
    column_labels: &[String],
    values: &[Vec<f64>],
    x_label: &str,
) -> String {
    let rows = row_names.len().min(values.len());
    let cols = column_labels.len();
    let max = values
        .iter()
        .take(rows)
        .flatten()
        .filter(|v| v.is_finite())
        .fold(0.0f64, |m, v| m.max(v.abs()))
        .max(1e-300);
    let (label_w, cell_h) = (150.0, 18.0);
    let cell_w = ((WIDTH - label_w - 90.0) / cols.max(1) as f64).max(4.0);
    let width = label_w + cell_w * cols as f64 + 90.0;
    let height = TOP + BOTTOM + cell_h * rows.max(1) as f64;
    let mut out = String::new();
    let _ = write!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{height:.0}\" viewBox=\"0 0 {width:.0} {height:.0}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect x=\"0\" y=\"0\" width=\"{width:.0}\" height=\"{height:.0}\" fill=\"white\"/>\n\
         <text x=\"{:.1}\" y=\"24\" text-anchor=\"middle\" font-size=\"15\">{}</text>\n",
        width / 2.0,
        escape(title)
    );
    for (i, name) in row_names.iter().take(rows).enumerate() {
        let y = TOP + cell_h * i as f64;
        let _ = writeln!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            label_w - 6.0,
            y + 13.0,
            escape(name)
        );
        for (k, v) in values[i].iter().take(cols).enumerate() {
            let shown = if v.is_finite() { *v } else { 0.0 };
            let _ = writeln!(
                out,
                "<rect class=\"cell\" x=\"{:.1}\" y=\"{y:.1}\" width=\"{cell_w:.2}\" height=\"{cell_h:.1}\" fill=\"{}\"><title>{}, {}: {}</title></rect>",
                label_w + cell_w * k as f64,
                diverging(shown / max),
                escape(name),
                escape(&column_labels[k]),
                tick_label(shown)
            );
        }
    }
    let bottom = TOP + cell_h * rows as f64;
    for (k, label) in column_labels.iter().enumerate() {
        let _ = writeln!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"10\">{}</text>",
            label_w + cell_w * (k as f64 + 0.5),
            bottom + 14.0,
            escape(label)
        );
    }
    let _ = writeln!(
        out,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\n\
         <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" font-size=\"10\">colour scale: red +{}, white 0, blue -{}</text>",
        label_w + cell_w * cols as f64 / 2.0,
        bottom + 34.0,
        escape(x_label),
        label_w + cell_w * cols as f64,
        TOP - 4.0,
        tick_label(max),
        tick_label(max)
    );
    out.push_str("</svg>\n");
    out
}

/// A glass brain: every region's centre (millimetres, MNI-like axes: x left
/// to right, y posterior to anterior, z inferior to superior) projected onto
/// the sagittal (y, z), coronal (x, z) and axial (x, y) planes, inside an
/// outline of the MNI brain's extent. All regions are small grey dots; the
/// `top_k` highest `scores` are `<circle class="top">`s, sized and coloured by
/// score and numbered by rank, and listed with their names beneath.
pub fn glass_brain_svg(
    title: &str,
    names: &[String],
    coordinates: &[[f64; 3]],
    scores: &[f64],
    top_k: usize,
) -> String {
    let n = names.len().min(coordinates.len()).min(scores.len());
    let mut order: Vec<usize> = (0..n).filter(|&i| scores[i].is_finite()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    order.truncate(top_k);
    let max = order
        .iter()
        .map(|&i| scores[i].abs())
        .fold(0.0f64, f64::max)
        .max(1e-300);
    // The MNI152 brain's extent in millimetres, per axis (x, y, z).
    const EXTENT: [(f64, f64); 3] = [(-72.0, 72.0), (-108.0, 74.0), (-56.0, 84.0)];
    let scale = 1.2; // pixels per millimetre
                     // (label, horizontal axis, vertical axis): the vertical axis grows
                     // upwards on screen (superior up; anterior up in the axial view).
    let views: [(&str, usize, usize); 3] = [
        ("sagittal (y, z)", 1, 2),
        ("coronal (x, z)", 0, 2),
        ("axial (x, y)", 0, 1),
    ];
    let panel_h = (EXTENT[1].1 - EXTENT[1].0) * scale;
    let list_h = 16.0 * order.len() as f64;
    let panels_w: f64 = views
        .iter()
        .map(|&(_, h, _)| (EXTENT[h].1 - EXTENT[h].0) * scale + 20.0)
        .sum();
    let width = panels_w + 20.0;
    let height = TOP + panel_h + 40.0 + list_h + 20.0;
    let mut out = String::new();
    let _ = write!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{height:.0}\" viewBox=\"0 0 {width:.0} {height:.0}\" font-family=\"sans-serif\" font-size=\"11\">\n\
         <rect x=\"0\" y=\"0\" width=\"{width:.0}\" height=\"{height:.0}\" fill=\"white\"/>\n\
         <text x=\"{:.1}\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">{}</text>\n",
        width / 2.0,
        escape(title)
    );
    let mut left = 20.0;
    for &(label, h, v) in &views {
        let (h0, h1) = EXTENT[h];
        let (v0, v1) = EXTENT[v];
        let w = (h1 - h0) * scale;
        let ph = (v1 - v0) * scale;
        let top = TOP + (panel_h - ph) / 2.0;
        let at = |p: &[f64; 3]| -> (f64, f64) {
            (left + (p[h] - h0) * scale, top + (v1 - p[v]) * scale)
        };
        let _ = writeln!(
            out,
            "<ellipse cx=\"{:.1}\" cy=\"{:.1}\" rx=\"{:.1}\" ry=\"{:.1}\" fill=\"#f4f4f4\" stroke=\"#999\"/>\n\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            left + w / 2.0,
            top + ph / 2.0,
            w / 2.0,
            ph / 2.0,
            left + w / 2.0,
            TOP + panel_h + 16.0,
            label
        );
        for p in coordinates.iter().take(n) {
            let (x, y) = at(p);
            let _ = writeln!(
                out,
                "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"1.6\" fill=\"#bbb\"/>"
            );
        }
        // Lowest-ranked first, so the first-ranked is drawn on top.
        for (rank, &i) in order.iter().enumerate().rev() {
            let (x, y) = at(&coordinates[i]);
            let s = scores[i] / max;
            let r = 3.0 + 5.0 * s.abs();
            let _ = writeln!(
                out,
                "<circle class=\"top\" cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"{r:.1}\" fill=\"{}\" fill-opacity=\"0.85\" stroke=\"#333\" stroke-width=\"0.5\"><title>{}. {}: {}</title></circle>\n\
                 <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"9\">{}</text>",
                diverging(0.35 + 0.65 * s),
                rank + 1,
                escape(&names[i]),
                tick_label(scores[i]),
                x + r + 1.0,
                y + 3.0,
                rank + 1
            );
        }
        left += w + 20.0;
    }
    let list_top = TOP + panel_h + 40.0;
    for (rank, &i) in order.iter().enumerate() {
        let p = coordinates[i];
        let _ = writeln!(
            out,
            "<text x=\"20\" y=\"{:.1}\">{}. {} ({:.0}, {:.0}, {:.0}): {}</text>",
            list_top + 16.0 * rank as f64,
            rank + 1,
            escape(&names[i]),
            p[0],
            p[1],
            p[2],
            tick_label(scores[i])
        );
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Well-formed enough for a browser: every `<tag>` closed by `</tag>` in
    /// order, self-closing tags allowed, quotes balanced, no NaN or inf.
    fn check_xml(svg: &str) {
        assert!(
            !svg.contains("NaN") && !svg.contains("inf"),
            "non-finite number in SVG"
        );
        let mut stack: Vec<String> = Vec::new();
        let mut rest = svg;
        while let Some(start) = rest.find('<') {
            let end = rest[start..].find('>').expect("unclosed <") + start;
            let tag = &rest[start + 1..end];
            assert_eq!(
                tag.matches('"').count() % 2,
                0,
                "unbalanced quotes in <{tag}>"
            );
            if let Some(name) = tag.strip_prefix('/') {
                assert_eq!(stack.pop().as_deref(), Some(name), "mismatched </{name}>");
            } else if !tag.ends_with('/') {
                let name = tag.split_whitespace().next().unwrap_or("").to_string();
                stack.push(name);
            }
            rest = &rest[end + 1..];
        }
        assert!(stack.is_empty(), "unclosed tags: {stack:?}");
        assert!(svg.starts_with("<svg"));
    }

    #[test]
    fn loss_curve() {
        let a: Vec<(f64, f64)> = (0..50)
            .map(|i| (i as f64, 10.0 / (1.0 + i as f64)))
            .collect();
        let mut b: Vec<(f64, f64)> = (0..50).map(|i| (i as f64, 5.0 - 0.05 * i as f64)).collect();
        b[3].1 = f64::NAN;
        b[4].1 = f64::INFINITY;
        for log_y in [false, true] {
            let svg = loss_curve_svg(
                "loss <pretrain & finetune>",
                &[
                    Series {
                        label: "pretrain",
                        points: &a,
                    },
                    Series {
                        label: "fine-tune",
                        points: &b,
                    },
                ],
                log_y,
            );
            check_xml(&svg);
            assert_eq!(svg.matches("<path").count(), 2);
            assert!(svg.contains("&lt;pretrain &amp; finetune&gt;"));
        }
        // Nothing plottable still gives a valid, empty chart.
        let svg = loss_curve_svg(
            "empty",
            &[Series {
                label: "x",
                points: &[(0.0, f64::NAN)],
            }],
            true,
        );
        check_xml(&svg);
        assert_eq!(svg.matches("<path").count(), 0);
    }

    #[test]
    fn roc_curves_with_auc_in_legend() {
        let curves: Vec<RocCurve> = (0..5)
            .map(|f| RocCurve {
                label: format!("fold {}", f + 1),
                points: vec![(0.0, 0.0), (0.1 * f as f64, 0.6), (1.0, 1.0)],
                auc: 0.7 + 0.01 * f as f64,
            })
            .collect();
        let svg = roc_svg("ROC", &curves);
        check_xml(&svg);
        assert_eq!(svg.matches("<path").count(), 5);
        assert!(svg.contains("fold 1 (AUC 0.700)") && svg.contains("fold 5 (AUC 0.740)"));
        assert!(svg.contains("class=\"chance\""));
    }

    #[test]
    fn importance_bars_top_k() {
        let names: Vec<String> = (0..200).map(|i| format!("ROI {i}")).collect();
        let mut values: Vec<f64> = (0..200)
            .map(|i| ((i * 37) % 101) as f64 / 100.0 - 0.5)
            .collect();
        values[7] = f64::NAN;
        values[11] = -3.0;
        let svg = importance_svg("region importance", &names, &values, 15);
        check_xml(&svg);
        assert_eq!(svg.matches("class=\"bar\"").count(), 15);
        // The largest |value| is first and labelled.
        let first = svg.find("ROI 11").unwrap();
        assert!(svg.find("class=\"bar\"").unwrap() > first);
        let svg = importance_svg("few", &names[..3], &values[..3], 15);
        assert_eq!(svg.matches("class=\"bar\"").count(), 3);
        check_xml(&svg);
    }

    #[test]
    fn heatmap_has_one_cell_per_value_coloured_by_sign() {
        let rows: Vec<String> = vec!["a".into(), "b & c".into()];
        let cols: Vec<String> = (0..3).map(|k| format!("{}", 8 * k)).collect();
        let values = vec![vec![2.0, 0.0, -1.0], vec![f64::NAN, 1.0, -2.0]];
        let svg = heatmap_svg("cells", &rows, &cols, &values, "frame");
        check_xml(&svg);
        assert_eq!(svg.matches("class=\"cell\"").count(), 6);
        // The extremes saturate: +max pure red, -max pure blue, 0 white.
        assert!(svg.contains("fill=\"#ff0000\"><title>a, 0: 2</title>"));
        assert!(svg.contains("fill=\"#0000ff\"><title>b &amp; c, 16: -2</title>"));
        assert!(svg.contains("fill=\"#ffffff\"><title>a, 8: 0</title>"));
    }

    #[test]
    fn glass_brain_marks_the_top_regions_in_three_views() {
        let names: Vec<String> = (1..=5).map(|i| format!("r{i}")).collect();
        let coords = vec![
            [-40.0, -80.0, 0.0],
            [0.0, 0.0, 0.0],
            [40.0, 50.0, 60.0],
            [10.0, -20.0, -30.0],
            [0.0, 10.0, 20.0],
        ];
        let scores = vec![0.1, f64::NAN, 3.0, -1.0, 2.0];
        let svg = glass_brain_svg("brain", &names, &coords, &scores, 2);
        check_xml(&svg);
        // Every region a grey dot in each of the three views; the top two
        // marked in each view, and listed once, ranked, with coordinates.
        assert_eq!(svg.matches("fill=\"#bbb\"").count(), 15);
        assert_eq!(svg.matches("class=\"top\"").count(), 6);
        assert!(svg.contains(">1. r3 (40, 50, 60): 3</text>"));
        assert!(svg.contains(">2. r5 (0, 10, 20): 2</text>"));
        assert!(!svg.contains("3. r"));
        // Superior is up: in the sagittal view r3 (z 60) lies above r5 (z 20).
        let cy = |title: &str| -> f64 {
            let at = svg.find(title).unwrap();
            let circle = svg[..at].rfind("<circle").unwrap();
            let tail = &svg[circle..];
            let start = tail.find("cy=\"").unwrap() + 4;
            tail[start..start + tail[start..].find('"').unwrap()]
                .parse()
                .unwrap()
        };
        assert!(cy("<title>1. r3") < cy("<title>2. r5"));
    }

    #[test]
    fn ticks_are_round() {
        assert_eq!(
            nice_ticks(0.0, 1.0),
            vec![0.0, 0.2, 0.4, 0.6000000000000001, 0.8, 1.0]
        );
        assert_eq!(tick_label(0.6000000000000001), "0.6");
        assert_eq!(tick_label(1e-6), "1e-6");
    }
}
