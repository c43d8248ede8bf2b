//! `yukicomm top`: a live view of the program, asked again about once a second.
//!
//! The terminal is put in its alternate screen and raw mode by ratatui and given back
//! as it was when the view ends: on `q`, Esc or Ctrl-C, on an error, and on a panic
//! (ratatui's hook).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Paragraph, Row, Table};
use ratatui::Frame;
use yukicomm_wire::stats::Stats;

use super::{channels, status, store};
use crate::connect::{Error, Observer};

pub fn run(observer: &mut Observer, interval_ms: u64) -> Result<ExitCode, Error> {
    let interval = Duration::from_millis(interval_ms.max(100));
    let mut terminal = ratatui::try_init().map_err(Error::Terminal)?;
    let result = view(&mut terminal, observer, interval);
    ratatui::restore();
    result.map(|()| ExitCode::SUCCESS)
}

fn view(
    terminal: &mut ratatui::DefaultTerminal,
    observer: &mut Observer,
    interval: Duration,
) -> Result<(), Error> {
    loop {
        let stats = observer.stats()?;
        terminal
            .draw(|f| draw(f, &stats))
            .map_err(Error::Terminal)?;
        let next = Instant::now() + interval;
        // Keys until the next update.
        loop {
            let left = next.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            if !event::poll(left).map_err(Error::Terminal)? {
                break;
            }
            if let Event::Key(k) = event::read().map_err(Error::Terminal)? {
                let ctrl_c =
                    k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL);
                if k.kind != KeyEventKind::Release
                    && (ctrl_c || matches!(k.code, KeyCode::Char('q') | KeyCode::Esc))
                {
                    return Ok(());
                }
            }
        }
    }
}

/// Rows of cells as a table with a bold header and columns as wide as their content.
fn grid<'a>(rows: Vec<Vec<String>>, title: &'a str) -> Table<'a> {
    let cols = rows.first().map_or(0, Vec::len);
    let widths: Vec<Constraint> = (0..cols)
        .map(|c| {
            let w = rows
                .iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0);
            Constraint::Length(w as u16)
        })
        .collect();
    let mut it = rows.into_iter();
    let header = Row::new(it.next().unwrap_or_default())
        .style(Style::default().add_modifier(Modifier::BOLD));
    Table::new(it.map(Row::new), widths)
        .header(header)
        .column_spacing(2)
        .block(Block::bordered().title(title))
}

fn draw(f: &mut Frame, s: &Stats) {
    let backlog: Vec<_> = s
        .channels
        .iter()
        .filter(|c| c.ends.iter().any(|e| e.backlog > 0))
        .cloned()
        .collect();
    let mut chan_stats = s.clone();
    chan_stats.channels = backlog;
    let chan_rows = channels::rows(&chan_stats);
    let sub_rows = store::subscription_rows(s);
    let areas = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(s.processes.len() as u16 + 3),
        Constraint::Length((chan_rows.len() as u16 + 2).min(12)),
        Constraint::Length(3),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .split(f.area());
    f.render_widget(Paragraph::new(status::header(s)), areas[0]);
    f.render_widget(grid(status::process_rows(s), " processes "), areas[1]);
    f.render_widget(grid(chan_rows, " channels with a backlog "), areas[2]);
    f.render_widget(
        Paragraph::new(store::summary(s)).block(Block::bordered().title(" store ")),
        areas[3],
    );
    f.render_widget(grid(sub_rows, " subscriptions "), areas[4]);
    f.render_widget(Line::from("q: quit"), areas[5]);
}
