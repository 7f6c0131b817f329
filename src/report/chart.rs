//! The plotting primitives: a [`Figure`] is panels stacked top to bottom, a [`Panel`] is
//! lines, bands and reference lines on one pair of axes with a legend; and the colours.
//! [`super::figures`] says what goes into them, [`super::draw`] puts them on a canvas.

use plotters::style::RGBColor;

use super::log::{has_data, Pts};

pub(super) const FUSED: RGBColor = RGBColor(30, 30, 30);
pub(super) const TEST: RGBColor = RGBColor(214, 39, 40);
pub(super) const TRAIN: RGBColor = RGBColor(140, 140, 140);
pub(super) const REF: RGBColor = RGBColor(150, 150, 150);
/// Modality / run colours (Tableau-like, without the red and black used for fused curves).
pub(super) const PALETTE: [RGBColor; 9] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
    RGBColor(127, 127, 127),
];

pub(super) fn modality_color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

/// Ordered colours for depths (viridis, dark purple to green; the pale yellow end is left
/// out because it vanishes on white).
pub(super) fn depth_color(d: usize, n: usize) -> RGBColor {
    const STOPS: [(f64, f64, f64); 5] =
        [(68., 1., 84.), (59., 82., 139.), (33., 145., 140.), (53., 183., 121.), (143., 215., 68.)];
    let t = if n <= 1 { 0.0 } else { d as f64 / (n - 1) as f64 } * (STOPS.len() - 1) as f64;
    let i = (t.floor() as usize).min(STOPS.len() - 2);
    let f = t - i as f64;
    let (a, b) = (STOPS[i], STOPS[i + 1]);
    let mix = |x: f64, y: f64| (x + (y - x) * f).round() as u8;
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Dash {
    Solid,
    Dashed,
    Dotted,
}

/// One curve: its points (a missing value breaks it) and how it is drawn.
pub(super) struct Line {
    pub(super) label: Option<String>,
    pub(super) color: RGBColor,
    pub(super) dash: Dash,
    pub(super) width: u32,
    pub(super) step: bool,
    pub(super) pts: Pts,
}

impl Line {
    pub(super) fn new(label: impl Into<String>, color: RGBColor, pts: Pts) -> Line {
        Line { label: Some(label.into()), color, dash: Dash::Solid, width: 2, step: false, pts }
    }
    pub(super) fn unlabelled(color: RGBColor, pts: Pts) -> Line {
        Line { label: None, ..Line::new("", color, pts) }
    }
    pub(super) fn dash(mut self, dash: Dash) -> Line {
        self.dash = dash;
        self
    }
    pub(super) fn width(mut self, width: u32) -> Line {
        self.width = width;
        self
    }
    pub(super) fn step(mut self) -> Line {
        self.step = true;
        self
    }
}

#[derive(Clone)]
/// One legend row: a line sample and its label.
pub(super) struct LegendItem {
    pub(super) label: String,
    pub(super) color: RGBColor,
    pub(super) dash: Dash,
    pub(super) width: u32,
    /// Draw a point marker on the sample (the curves carry markers too).
    pub(super) marker: bool,
}

/// One bar of a bar panel: its centre and width on the x axis, its height from zero, and
/// the half-width of its error bar (± one standard deviation over seeds).
pub(super) struct Bar {
    pub(super) x: f64,
    pub(super) width: f64,
    pub(super) value: f64,
    pub(super) err: Option<f64>,
    pub(super) color: RGBColor,
}

/// One pair of axes with its curves, reference lines, bands and legend; or, when it has
/// categories, a bar panel: category `i` at x = i, its bars grouped around it.
pub(super) struct Panel {
    pub(super) title: Option<String>,
    pub(super) x_desc: String,
    pub(super) y_desc: String,
    pub(super) lines: Vec<Line>,
    /// Horizontal reference lines: value and legend label.
    pub(super) refs: Vec<(f64, String)>,
    /// Legend entries not tied to one line (e.g. colour = depth, dash = modality).
    pub(super) extra_legend: Vec<LegendItem>,
    pub(super) integer_y: bool,
    /// Shaded bands drawn under the lines: colour and (x, low, high) points.
    pub(super) bands: Vec<(RGBColor, Vec<(f64, f64, f64)>)>,
    /// The x axis' category names (a bar panel); empty for curves over epochs.
    pub(super) categories: Vec<String>,
    /// The bars of a bar panel, each labelled with its value.
    pub(super) bars: Vec<Bar>,
}

impl Panel {
    pub(super) fn new(x_desc: &str, y_desc: &str) -> Panel {
        Panel {
            title: None,
            x_desc: x_desc.into(),
            y_desc: y_desc.into(),
            lines: Vec::new(),
            refs: Vec::new(),
            extra_legend: Vec::new(),
            integer_y: false,
            bands: Vec::new(),
            categories: Vec::new(),
            bars: Vec::new(),
        }
    }
    pub(super) fn titled(mut self, title: impl Into<String>) -> Panel {
        self.title = Some(title.into());
        self
    }
    /// Adds the line if it has at least one value.
    pub(super) fn push(&mut self, line: Line) {
        if has_data(&line.pts) {
            self.lines.push(line);
        }
    }
    pub(super) fn has_data(&self) -> bool {
        !self.lines.is_empty() || !self.bars.is_empty()
    }
    /// Whether curves get point markers: short runs only, else they clutter.
    pub(super) fn markers(&self) -> bool {
        let points = |l: &Line| l.pts.iter().filter(|q| q.1.is_some()).count();
        self.lines.iter().map(points).max().unwrap_or(0) <= 30
    }
    pub(super) fn legend(&self) -> Vec<LegendItem> {
        let marker = self.markers();
        let mut items: Vec<LegendItem> = self
            .lines
            .iter()
            .filter_map(|l| {
                let label = l.label.clone()?;
                Some(LegendItem { label, color: l.color, dash: l.dash, width: l.width, marker })
            })
            .collect();
        items.extend(self.extra_legend.iter().cloned());
        items.extend(self.refs.iter().map(|(_, label)| LegendItem {
            label: label.clone(),
            color: REF,
            dash: Dash::Dashed,
            width: 2,
            marker: false,
        }));
        items
    }
}

/// One chart file (`<stem>.png`, `<stem>.svg`): a title over stacked panels.
pub(super) struct Figure {
    pub(super) stem: String,
    pub(super) title: String,
    /// Stacked top to bottom.
    pub(super) panels: Vec<Panel>,
}

