//! The figures of a run: a table on stdout, `report.json`, and the cost-per-packet chart.

use std::{fmt::Write as _, fs, path::Path};

use anyhow::Context as _;
use serde::Serialize;

/// One measured figure, with the baseline of the same run it is compared to.
#[derive(Clone, Debug, Serialize)]
pub struct Figure {
    pub name: String,
    pub value: f64,
    pub unit: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline: Option<String>,
    /// `value / baseline value`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Figure {
    pub fn new(name: impl Into<String>, value: f64, unit: &'static str) -> Self {
        Self {
            name: name.into(),
            value,
            unit,
            baseline: None,
            ratio: None,
            note: None,
        }
    }

    /// Compares with `baseline` (same unit).
    #[must_use]
    pub fn vs(mut self, baseline: &Self) -> Self {
        self.ratio = (baseline.value != 0.0).then(|| self.value / baseline.value);
        self.baseline = Some(baseline.name.clone());
        self
    }

    #[must_use]
    pub fn note(mut self, note: impl Into<String>) -> Self {
        self.note = Some(note.into());
        self
    }
}

#[derive(Debug, Default, Serialize)]
pub struct Section {
    pub title: String,
    pub method: String,
    pub figures: Vec<Figure>,
}

impl Section {
    pub fn new(title: &str, method: &str) -> Self {
        Self {
            title: title.to_owned(),
            method: method.to_owned(),
            figures: Vec::new(),
        }
    }

    /// Adds `figure` and returns a copy, to name it as a baseline later.
    pub fn push(&mut self, figure: Figure) -> Figure {
        self.figures.push(figure.clone());
        figure
    }

    /// Prints the section as a table.
    pub fn print(&self) {
        println!("\n== {}", self.title);
        println!("   {}", self.method);
        let width = self
            .figures
            .iter()
            .map(|figure| figure.name.len())
            .max()
            .unwrap_or(0);
        for figure in &self.figures {
            let mut line = format!(
                "  {:width$}  {:>12} {:<6}",
                figure.name,
                format_value(figure.value),
                figure.unit
            );
            if let (Some(baseline), Some(ratio)) = (&figure.baseline, figure.ratio) {
                let _ = write!(line, "  {ratio:>6.2}x {baseline}");
            }
            if let Some(note) = &figure.note {
                let _ = write!(line, "  ({note})");
            }
            println!("{}", line.trim_end());
        }
    }
}

fn format_value(value: f64) -> String {
    if value.abs() >= 100.0 || value == 0.0 {
        format!("{value:.0}")
    } else if value.abs() >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

#[derive(Debug, Serialize)]
pub struct Machine {
    pub kernel: String,
    pub cpu: String,
    pub cores: usize,
    pub memory_mib: u64,
}

impl Machine {
    #[must_use]
    pub fn probe() -> Self {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|line| line.strip_prefix("model name")?.split_once(':'))
            .map_or_else(|| "unknown".to_owned(), |(_, name)| name.trim().to_owned());
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let memory_mib = fs::read_to_string("/proc/meminfo")
            .unwrap_or_default()
            .lines()
            .find_map(|line| line.strip_prefix("MemTotal:"))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map_or(0, |kib| kib / 1024);
        Self {
            kernel: uname(),
            cpu,
            cores,
            memory_mib,
        }
    }
}

/// `uname -srm`.
fn uname() -> String {
    // SAFETY: uname fills the zeroed struct with NUL-terminated strings.
    let mut name: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&raw mut name) } != 0 {
        return "unknown".to_owned();
    }
    let field = |chars: &[libc::c_char]| {
        // SAFETY: the kernel NUL-terminates every field.
        unsafe { std::ffi::CStr::from_ptr(chars.as_ptr()) }
            .to_string_lossy()
            .into_owned()
    };
    format!(
        "{} {} {}",
        field(&name.sysname),
        field(&name.release),
        field(&name.machine)
    )
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub machine: Machine,
    pub mode: &'static str,
    pub command: String,
    pub unix_time: u64,
    pub sections: Vec<Section>,
}

impl Report {
    pub fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        let json = serde_json::to_string_pretty(self)?;
        fs::write(path, json + "\n").with_context(|| format!("writing {}", path.display()))
    }
}

/// A line of the chart: points `(prefixes, ns)`.
pub struct Series {
    pub label: String,
    pub color: &'static str,
    pub dashed: bool,
    pub points: Vec<(f64, f64)>,
}

/// Cost per packet against table size: x logarithmic over 10k .. 1M prefixes, y linear.
#[expect(clippy::too_many_lines, reason = "one SVG document, top to bottom")]
#[must_use]
pub fn svg_chart(title: &str, subtitle: &str, series: &[Series]) -> String {
    const W: f64 = 860.0;
    const H: f64 = 520.0;
    const LEFT: f64 = 70.0;
    const RIGHT: f64 = 300.0;
    const TOP: f64 = 60.0;
    const BOTTOM: f64 = 60.0;
    let (x_lo, x_hi) = (10_000f64.log10() - 0.15, 1_000_000f64.log10() + 0.15);
    let y_max = series
        .iter()
        .flat_map(|s| s.points.iter().map(|&(_, y)| y))
        .fold(0.0f64, f64::max);
    let step = nice_step(y_max / 5.0);
    let y_top = (y_max / step).ceil().max(1.0) * step;
    let px = |x: f64| LEFT + (x.log10() - x_lo) / (x_hi - x_lo) * (W - LEFT - RIGHT);
    let py = |y: f64| H - BOTTOM - y / y_top * (H - TOP - BOTTOM);

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="13">"#
    );
    let _ = writeln!(svg, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{LEFT}" y="24" font-size="17" font-weight="bold">{}</text>"#,
        escape(title)
    );
    let _ = writeln!(
        svg,
        r##"<text x="{LEFT}" y="44" fill="#555">{}</text>"##,
        escape(subtitle)
    );
    // Grid and y labels.
    let mut y = 0.0;
    while y <= y_top + step / 2.0 {
        let yy = py(y);
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="#ddd"/>"##,
            W - RIGHT
        );
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            LEFT - 8.0,
            yy + 4.0,
            format_value(y)
        );
        y += step;
    }
    for (x, label) in [(10_000.0, "10k"), (100_000.0, "100k"), (1_000_000.0, "1M")] {
        let xx = px(x);
        let _ = writeln!(
            svg,
            r##"<line x1="{xx:.1}" y1="{TOP}" x2="{xx:.1}" y2="{:.1}" stroke="#ddd"/>"##,
            H - BOTTOM
        );
        let _ = writeln!(
            svg,
            r#"<text x="{xx:.1}" y="{:.1}" text-anchor="middle">{label}</text>"#,
            H - BOTTOM + 20.0
        );
    }
    let _ = writeln!(
        svg,
        r##"<rect x="{LEFT}" y="{TOP}" width="{:.1}" height="{:.1}" fill="none" stroke="#333"/>"##,
        W - LEFT - RIGHT,
        H - TOP - BOTTOM
    );
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">prefixes in the table (log scale)</text>"#,
        LEFT + (W - LEFT - RIGHT) / 2.0,
        H - 14.0
    );
    let _ = writeln!(
        svg,
        r#"<text transform="translate(18 {:.1}) rotate(-90)" text-anchor="middle">ns per packet</text>"#,
        TOP + (H - TOP - BOTTOM) / 2.0
    );
    // Lines, points, legend.
    for (index, line) in series.iter().enumerate() {
        let dash = if line.dashed {
            r#" stroke-dasharray="6 4""#
        } else {
            ""
        };
        let points: Vec<String> = line
            .points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        if points.len() > 1 {
            let _ = writeln!(
                svg,
                r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2.5"{dash}/>"#,
                points.join(" "),
                line.color
            );
        }
        for &(x, y) in &line.points {
            let _ = writeln!(
                svg,
                r#"<circle cx="{:.1}" cy="{:.1}" r="4" fill="{}"><title>{}: {} ns</title></circle>"#,
                px(x),
                py(y),
                line.color,
                escape(&line.label),
                format_value(y)
            );
        }
        #[expect(clippy::cast_precision_loss, reason = "a handful of series")]
        let ly = TOP + 10.0 + 22.0 * index as f64;
        let lx = W - RIGHT + 16.0;
        let _ = writeln!(
            svg,
            r#"<line x1="{lx:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{}" stroke-width="2.5"{dash}/>"#,
            lx + 26.0,
            line.color
        );
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" font-size="12">{}</text>"#,
            lx + 32.0,
            ly + 4.0,
            escape(&line.label)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// 1, 2 or 5 times a power of ten, at least `raw`.
fn nice_step(raw: f64) -> f64 {
    if raw <= 0.0 {
        return 1.0;
    }
    let magnitude = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|step| *step >= raw)
        .unwrap_or(10.0 * magnitude)
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
