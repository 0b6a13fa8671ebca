//! `majordomo top`: a live view of a broker, refreshed from `mmi.stats`.
//!
//! # Layout
//! - [`Model`]: what the screen shows (the last two answers, the sort, whether the broker
//!   stopped answering), changed by answers and keys, with no terminal and no clock of its own.
//! - [`render`]: a pure function from a model and `now` to a ratatui [`Frame`], tested on
//!   ratatui's test backend.
//! - [`run`]: the IO loop. A task polls the broker every `--interval` and a thread reads the
//!   keyboard; the loop owns the model and draws it after each event. The terminal is restored
//!   on every exit: a guard's drop on return and on error, ratatui's panic hook on a panic.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use clap::Args;
use majordomo_broker::{BrokerStats, ServiceStats, StatsQuery, MAX_STATS_PAGE};
use majordomo_client::Client;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Cell, Paragraph, Row, Table};
use ratatui::Frame;
use tokio::sync::mpsc;

use super::status::{age, ask, Asked};

/// Options of `top`.
#[derive(Args)]
pub(crate) struct TopArgs {
    /// Broker endpoint.
    #[arg(long, default_value = crate::connect::DEFAULT_ENDPOINT)]
    connect: String,
    /// How often to ask the broker for its stats (`mmi.stats`) and refresh the screen; the
    /// rates are per second over the last interval.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// How long to wait for each answer; past it the screen keeps the last data, marked stale,
    /// and the next interval asks again.
    #[arg(long, default_value = "2500ms", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Show the services whose name starts with this (up to 1,000, in name order) instead of
    /// the 100 busiest.
    #[arg(long)]
    prefix: Option<String>,
    // Last: clap lists the options after a flattened group under its heading.
    #[command(flatten)]
    curve: crate::connect::CurveArgs,
}

/// A column of the services table, and a sort order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Column {
    /// The service name.
    Name,
    /// Requests waiting for a worker.
    Queued,
    /// Idle workers.
    Idle,
    /// Busy workers.
    Busy,
    /// Requests accepted per second over the last interval.
    Rate,
    /// The age of the oldest queued request.
    Oldest,
    /// Requests dropped or refused since the broker came to know the service.
    Drops,
}

impl Column {
    /// Every column, in the order shown (and cycled through by `s`).
    pub(crate) const ALL: [Column; 7] = [
        Column::Name,
        Column::Queued,
        Column::Idle,
        Column::Busy,
        Column::Rate,
        Column::Oldest,
        Column::Drops,
    ];

    fn title(self) -> &'static str {
        match self {
            Column::Name => "SERVICE",
            Column::Queued => "QUEUED",
            Column::Idle => "IDLE",
            Column::Busy => "BUSY",
            Column::Rate => "REQ/S",
            Column::Oldest => "OLDEST",
            Column::Drops => "DROPS",
        }
    }

    fn next(self) -> Self {
        let at = Column::ALL.iter().position(|c| *c == self).unwrap_or(0);
        Column::ALL[(at + 1) % Column::ALL.len()]
    }
}

/// One line of the services table, as computed from the last two answers.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ServiceRow {
    /// The service name (bytes that are not UTF-8 replaced).
    pub(crate) name: String,
    /// Requests queued.
    pub(crate) queued: usize,
    /// Idle workers.
    pub(crate) idle: usize,
    /// Busy workers.
    pub(crate) busy: usize,
    /// Requests accepted per second since the answer before, if it listed the service (and
    /// its counter did not restart).
    pub(crate) rate: Option<f64>,
    /// How long the oldest queued request has waited, in milliseconds (none queued: `None`).
    pub(crate) oldest_ms: Option<u64>,
    /// Requests dropped (expired, abandoned) or refused (bounds, draining).
    pub(crate) drops: u64,
}

/// One answer of the broker and when it came.
#[derive(Debug, Clone)]
struct Snapshot {
    stats: BrokerStats,
    at: Instant,
}

/// What a key asks of the loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// Draw again.
    Redraw,
    /// Leave.
    Quit,
}

/// What the screen shows: the last two answers, the sort, and why the broker is not answering
/// if it is not.
#[derive(Debug)]
pub(crate) struct Model {
    endpoint: String,
    interval: Duration,
    previous: Option<Snapshot>,
    latest: Option<Snapshot>,
    /// Why the last question got no answer, while the broker is not answering.
    failing: Option<String>,
    sort: Column,
    reverse: bool,
}

impl Model {
    /// A model of the broker at `endpoint`, asked every `interval`, with no answer yet.
    pub(crate) fn new(endpoint: impl Into<String>, interval: Duration) -> Self {
        Self {
            endpoint: endpoint.into(),
            interval,
            previous: None,
            latest: None,
            failing: None,
            sort: Column::Name,
            reverse: false,
        }
    }

    /// The broker answered with `stats` at `at`.
    pub(crate) fn answered(&mut self, at: Instant, stats: BrokerStats) {
        self.previous = self.latest.take();
        self.latest = Some(Snapshot { stats, at });
        self.failing = None;
    }

    /// The broker did not answer (or not with stats): the last data stays, stale.
    pub(crate) fn failed(&mut self, why: String) {
        self.failing = Some(why);
    }

    /// Whether what is shown is older than the broker's last silence.
    pub(crate) fn is_stale(&self) -> bool {
        self.failing.is_some()
    }

    /// `q`, Esc or Ctrl-C quit; `s` sorts by the next column, `1` to `7` by that column; `r`
    /// reverses the order.
    pub(crate) fn key(&mut self, code: KeyCode, modifiers: KeyModifiers) -> Action {
        match code {
            KeyCode::Char('q') | KeyCode::Esc => return Action::Quit,
            KeyCode::Char('c') if modifiers.contains(KeyModifiers::CONTROL) => return Action::Quit,
            KeyCode::Char('s') => {
                self.sort = self.sort.next();
                self.reverse = false;
            }
            KeyCode::Char('r') => self.reverse = !self.reverse,
            KeyCode::Char(digit @ '1'..='7') => {
                let at = usize::from(digit as u8 - b'1');
                self.sort = Column::ALL[at];
                self.reverse = false;
            }
            _ => {}
        }
        Action::Redraw
    }

    /// Seconds between the last two answers, if there are two.
    fn elapsed(&self) -> Option<f64> {
        let (previous, latest) = (self.previous.as_ref()?, self.latest.as_ref()?);
        let seconds = latest
            .at
            .saturating_duration_since(previous.at)
            .as_secs_f64();
        (seconds > 0.0).then_some(seconds)
    }

    /// Per second between the last two answers of a counter read by `count`; `None` without
    /// two answers, or when the counter went back (the broker restarted, or forgot the
    /// service).
    fn rate_of(&self, count: impl Fn(&BrokerStats) -> Option<u64>) -> Option<f64> {
        let seconds = self.elapsed()?;
        let before = count(&self.previous.as_ref()?.stats)?;
        let now = count(&self.latest.as_ref()?.stats)?;
        now.checked_sub(before).map(|d| d as f64 / seconds)
    }

    /// The services of the latest answer, sorted as asked (names ascending, numbers largest
    /// first; `r` reverses either), ties by name.
    pub(crate) fn rows(&self) -> Vec<ServiceRow> {
        let Some(latest) = &self.latest else {
            return Vec::new();
        };
        let find = |stats: &BrokerStats, name: &Bytes| -> Option<u64> {
            stats
                .per_service
                .iter()
                .find(|s| s.name == *name)
                .map(|s| s.requests)
        };
        let mut rows: Vec<ServiceRow> = latest
            .stats
            .per_service
            .iter()
            .map(|s: &ServiceStats| ServiceRow {
                name: String::from_utf8_lossy(&s.name).into_owned(),
                queued: s.queued,
                idle: s.idle_workers,
                busy: s.busy_workers,
                rate: self.rate_of(|stats| find(stats, &s.name)),
                oldest_ms: (s.queued > 0).then_some(s.oldest_queued_ms),
                drops: s.dropped + s.rejected,
            })
            .collect();
        let sort = self.sort;
        rows.sort_by(|a, b| {
            let by_number = |x: f64, y: f64| y.total_cmp(&x);
            let order = match sort {
                Column::Name => a.name.cmp(&b.name),
                Column::Queued => b.queued.cmp(&a.queued),
                Column::Idle => b.idle.cmp(&a.idle),
                Column::Busy => b.busy.cmp(&a.busy),
                Column::Rate => by_number(a.rate.unwrap_or(-1.0), b.rate.unwrap_or(-1.0)),
                Column::Oldest => b.oldest_ms.cmp(&a.oldest_ms),
                Column::Drops => b.drops.cmp(&a.drops),
            };
            order.then_with(|| a.name.cmp(&b.name))
        });
        if self.reverse {
            rows.reverse();
        }
        rows
    }
}

/// A rate as shown: one decimal, `-` when unknown.
fn rate_text(rate: Option<f64>) -> String {
    rate.map_or_else(|| "-".to_owned(), |r| format!("{r:.1}"))
}

/// Draws `model` on `frame` as of `now`: a title line, two lines of totals, the services table
/// and a status line (keys, or why the data is stale).
pub(crate) fn render(frame: &mut Frame<'_>, model: &Model, now: Instant) {
    let [title, totals, table, status] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(2),
        Constraint::Min(1),
        Constraint::Length(1),
    ])
    .areas(frame.area());

    // Names ascending and numbers largest first, unless reversed.
    let order = if (model.sort == Column::Name) != model.reverse {
        "ascending"
    } else {
        "descending"
    };
    let mut heading = vec![
        Span::styled("majordomo top", Style::new().add_modifier(Modifier::BOLD)),
        Span::raw(format!(
            "  {}  every {}  sorted by {} {order}",
            model.endpoint,
            humantime::format_duration(model.interval),
            model.sort.title().to_lowercase(),
        )),
    ];
    if model.is_stale() {
        heading.push(Span::styled(
            "  STALE",
            Style::new()
                .fg(Color::Red)
                .add_modifier(Modifier::BOLD | Modifier::REVERSED),
        ));
    }
    frame.render_widget(Paragraph::new(Line::from(heading)), title);

    if let Some(latest) = &model.latest {
        let s = &latest.stats;
        let busy = s.workers.saturating_sub(s.idle_workers);
        let draining = if s.draining { "  DRAINING" } else { "" };
        let lines = vec![
            Line::from(format!(
                "workers {} ({} idle, {busy} busy)  services {}  queued {} ({} bytes)  in flight {}{draining}",
                s.workers, s.idle_workers, s.services, s.queued, s.queued_bytes, s.in_flight
            )),
            Line::from(format!(
                "req/s {}  replies/s {}  requests {}  replies {}  expired {}  rejected {}  abandoned {}  mmi {}",
                rate_text(model.rate_of(|s| Some(s.requests))),
                rate_text(model.rate_of(|s| Some(s.replies))),
                s.requests,
                s.replies,
                s.expired,
                s.rejected,
                s.abandoned,
                s.mmi_requests
            )),
        ];
        frame.render_widget(Paragraph::new(lines), totals);
    }

    let header = Row::new(Column::ALL.map(|c| {
        let style = if c == model.sort {
            Style::new().add_modifier(Modifier::BOLD | Modifier::UNDERLINED)
        } else {
            Style::new().add_modifier(Modifier::BOLD)
        };
        Cell::from(c.title()).style(style)
    }));
    let rows = model.rows().into_iter().map(|r| {
        Row::new([
            r.name,
            r.queued.to_string(),
            r.idle.to_string(),
            r.busy.to_string(),
            rate_text(r.rate),
            r.oldest_ms.map_or_else(|| "-".to_owned(), age),
            r.drops.to_string(),
        ])
    });
    let widths = [
        Constraint::Fill(1),
        Constraint::Length(8),
        Constraint::Length(6),
        Constraint::Length(6),
        Constraint::Length(9),
        Constraint::Length(8),
        Constraint::Length(8),
    ];
    frame.render_widget(Table::new(rows, widths).header(header), table);

    let line = match (&model.failing, &model.latest) {
        (Some(why), latest) => {
            let shown = match latest {
                Some(latest) => format!(
                    "showing data {} old",
                    age(millis(now.saturating_duration_since(latest.at)))
                ),
                None => "no data yet".to_owned(),
            };
            Line::styled(
                format!("no answer: {why}; {shown}  (q quit)"),
                Style::new().fg(Color::Red),
            )
        }
        (None, None) => Line::from(format!("asking {}...  (q quit)", model.endpoint)),
        (None, Some(latest)) => {
            let omitted = match latest.stats.services_omitted {
                0 => String::new(),
                n => format!("  {n} more services not listed (--prefix)"),
            };
            Line::from(format!(
                "q quit  s next sort  1-7 sort by column  r reverse{omitted}"
            ))
        }
    };
    frame.render_widget(Paragraph::new(line), status);
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// What the keyboard thread reads.
enum Input {
    /// A key pressed.
    Key(KeyEvent),
    /// The terminal changed size (or anything else worth a redraw).
    Redraw,
}

/// The terminal in raw mode on the alternate screen; dropping it restores the terminal, so a
/// return and an error restore it alike (a panic is restored by the hook ratatui installs).
struct Screen(ratatui::DefaultTerminal);

impl Screen {
    fn enter() -> Result<Self> {
        let terminal = ratatui::try_init().context("majordomo top needs a terminal")?;
        Ok(Self(terminal))
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

/// A task aborted when this is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Asks the broker for its stats every `interval` (a slow answer delays the next question,
/// never piles questions up) and sends each outcome to the screen's loop, until that loop is
/// gone.
async fn poll(
    client: Client,
    query: Bytes,
    interval: Duration,
    endpoint: String,
    answers: mpsc::Sender<(Instant, Result<BrokerStats, String>)>,
) {
    let mut every = tokio::time::interval(interval);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let outcome = match ask(&client, "mmi.stats", query.clone(), &endpoint).await {
            Ok(Asked::Answer(json)) => serde_json::from_slice::<BrokerStats>(&json)
                .map_err(|error| format!("an answer that is not stats ({error})")),
            Ok(Asked::NoReply(error)) => Err(error.to_string()),
            Err(error) => Err(format!("{error:#}")),
        };
        if answers.send((Instant::now(), outcome)).await.is_err() {
            return;
        }
    }
}

/// Reads the keyboard on a thread of its own (crossterm's reads block) until the loop is gone.
fn read_keys(inputs: mpsc::Sender<Input>) {
    while !inputs.is_closed() {
        // Wakes up now and then to see whether the loop is still there.
        match event::poll(Duration::from_millis(100)) {
            Ok(false) => continue,
            Ok(true) => {}
            Err(_) => return,
        }
        let input = match event::read() {
            Ok(Event::Key(key)) if key.kind != KeyEventKind::Release => Input::Key(key),
            Ok(Event::Resize(..)) => Input::Redraw,
            Ok(_) => continue,
            Err(_) => return,
        };
        if inputs.blocking_send(input).is_err() {
            return;
        }
    }
}

/// Shows the broker's stats until `q`, Esc, Ctrl-C, SIGINT or SIGTERM; exit status 0.
pub(crate) async fn run(args: TopArgs) -> Result<ExitCode> {
    let client = super::status::probe_client(&args.connect, &args.curve, args.timeout)?;
    let query = match &args.prefix {
        Some(prefix) => StatsQuery {
            prefix: Bytes::from(prefix.clone()),
            offset: 0,
            limit: MAX_STATS_PAGE,
        }
        .encode(),
        None => Bytes::new(),
    };
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let (answers_tx, mut answers) = mpsc::channel(4);
    let _poller = AbortOnDrop(tokio::spawn(poll(
        client,
        query,
        args.interval,
        args.connect.clone(),
        answers_tx,
    )));
    let mut screen = Screen::enter()?;
    let (inputs_tx, mut inputs) = mpsc::channel(16);
    std::thread::Builder::new()
        .name("keyboard".into())
        .spawn(move || read_keys(inputs_tx))?;
    let mut model = Model::new(args.connect.clone(), args.interval);
    // The ages on the status line move on while the broker is silent.
    let mut clock = tokio::time::interval(Duration::from_secs(1));
    loop {
        screen
            .0
            .draw(|frame| render(frame, &model, Instant::now()))?;
        // Every branch is cancel-safe: channel receives, an interval tick and signal streams.
        tokio::select! {
            input = inputs.recv() => match input {
                Some(Input::Key(key)) => {
                    if model.key(key.code, key.modifiers) == Action::Quit {
                        break;
                    }
                }
                Some(Input::Redraw) => {}
                // The keyboard is gone (the terminal closed): nobody is watching.
                None => break,
            },
            Some((at, outcome)) = answers.recv() => match outcome {
                Ok(stats) => model.answered(at, stats),
                Err(why) => model.failed(why),
            },
            _ = clock.tick() => {}
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
    }
    drop(screen);
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use ratatui::backend::TestBackend;
    use ratatui::buffer::Buffer;
    use ratatui::Terminal;

    use super::*;

    fn service(name: &str, queued: usize, idle: usize, busy: usize, requests: u64) -> ServiceStats {
        ServiceStats {
            name: Bytes::copy_from_slice(name.as_bytes()),
            queued,
            idle_workers: idle,
            busy_workers: busy,
            requests,
            ..ServiceStats::default()
        }
    }

    fn stats(requests: u64, services: Vec<ServiceStats>) -> BrokerStats {
        BrokerStats {
            workers: services
                .iter()
                .map(|s| s.idle_workers + s.busy_workers)
                .sum(),
            idle_workers: services.iter().map(|s| s.idle_workers).sum(),
            services: services.len(),
            requests,
            replies: requests,
            per_service: services,
            ..BrokerStats::default()
        }
    }

    fn lines(buffer: &Buffer) -> Vec<String> {
        let width = usize::from(buffer.area.width);
        buffer
            .content
            .chunks(width)
            .map(|row| row.iter().map(|cell| cell.symbol()).collect::<String>())
            .collect()
    }

    fn draw(model: &Model, now: Instant) -> Vec<String> {
        let mut terminal = Terminal::new(TestBackend::new(110, 12)).expect("test terminal");
        terminal
            .draw(|frame| render(frame, model, now))
            .expect("draw");
        lines(terminal.backend().buffer())
    }

    /// The table's rows: the cells of each line below the header, split on runs of spaces.
    fn table(screen: &[String]) -> Vec<Vec<String>> {
        let header = screen
            .iter()
            .position(|l| l.starts_with("SERVICE"))
            .expect("a header");
        screen[header + 1..screen.len() - 1]
            .iter()
            .map(|l| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
            .filter(|cells| !cells.is_empty())
            .collect()
    }

    /// Two answers a second apart: echo took 30 requests, billing 5, slow none.
    fn model() -> (Model, Instant) {
        let t0 = Instant::now();
        let mut model = Model::new("tcp://127.0.0.1:5555", Duration::from_secs(1));
        model.answered(
            t0,
            stats(
                10,
                vec![
                    service("billing", 0, 1, 0, 5),
                    service("echo", 0, 2, 0, 0),
                    service("slow", 0, 0, 1, 3),
                ],
            ),
        );
        let mut slow = service("slow", 4, 0, 1, 3);
        slow.oldest_queued_ms = 2500;
        slow.dropped = 2;
        slow.rejected = 1;
        let t1 = t0 + Duration::from_secs(1);
        model.answered(
            t1,
            stats(
                45,
                vec![
                    service("billing", 0, 0, 1, 10),
                    service("echo", 0, 1, 1, 30),
                    slow,
                ],
            ),
        );
        (model, t1)
    }

    #[test]
    fn rates_come_from_two_answers_and_the_table_shows_every_column() {
        let (model, now) = model();
        let screen = draw(&model, now);
        assert!(
            screen[0].starts_with(
                "majordomo top  tcp://127.0.0.1:5555  every 1s  sorted by service ascending"
            ),
            "{screen:#?}"
        );
        assert!(!screen[0].contains("STALE"));
        assert!(
            screen[1].starts_with("workers 4 (1 idle, 3 busy)  services 3"),
            "{screen:#?}"
        );
        assert!(
            screen[2].starts_with("req/s 35.0  replies/s 35.0  requests 45"),
            "{screen:#?}"
        );
        assert_eq!(
            table(&screen),
            [
                ["billing", "0", "0", "1", "5.0", "-", "0"],
                ["echo", "0", "1", "1", "30.0", "-", "0"],
                ["slow", "4", "0", "1", "0.0", "2.5s", "3"],
            ]
        );
        assert!(screen[11].starts_with("q quit"), "{screen:#?}");
    }

    #[test]
    fn keys_cycle_the_sort_reverse_it_and_quit() {
        let (mut model, now) = model();
        let none = KeyModifiers::NONE;
        // s: by queued, largest first.
        assert_eq!(model.key(KeyCode::Char('s'), none), Action::Redraw);
        let names = |screen: &[String]| -> Vec<String> {
            table(screen)
                .into_iter()
                .map(|row| row[0].clone())
                .collect()
        };
        let screen = draw(&model, now);
        assert!(
            screen[0].contains("sorted by queued descending"),
            "{screen:#?}"
        );
        assert_eq!(names(&screen), ["slow", "billing", "echo"]);
        // 5: by requests per second.
        model.key(KeyCode::Char('5'), none);
        assert_eq!(names(&draw(&model, now)), ["echo", "billing", "slow"]);
        // r: the other way round.
        model.key(KeyCode::Char('r'), none);
        let screen = draw(&model, now);
        assert!(
            screen[0].contains("sorted by req/s ascending"),
            "{screen:#?}"
        );
        assert_eq!(names(&screen), ["slow", "billing", "echo"]);
        // s from the last column comes back to the names.
        model.key(KeyCode::Char('7'), none);
        model.key(KeyCode::Char('s'), none);
        assert_eq!(names(&draw(&model, now)), ["billing", "echo", "slow"]);
        assert_eq!(model.key(KeyCode::Char('q'), none), Action::Quit);
        assert_eq!(model.key(KeyCode::Esc, none), Action::Quit);
        assert_eq!(
            model.key(KeyCode::Char('c'), KeyModifiers::CONTROL),
            Action::Quit
        );
    }

    #[test]
    fn a_silent_broker_leaves_the_last_data_on_screen_marked_stale() {
        let (mut model, t1) = model();
        model.failed("no reply after 1 attempt".into());
        let screen = draw(&model, t1 + Duration::from_secs(6));
        assert!(screen[0].contains("STALE"), "{screen:#?}");
        // The data stays: echo still there with its rate.
        assert_eq!(table(&screen)[1][0..5], ["echo", "0", "1", "1", "30.0"]);
        assert!(
            screen[11].starts_with("no answer: no reply after 1 attempt; showing data 6.0s old"),
            "{screen:#?}"
        );
        // The next answer clears the mark; rates are over the time between the answers.
        model.answered(
            t1 + Duration::from_secs(7),
            stats(45, vec![service("echo", 0, 2, 0, 44)]),
        );
        let screen = draw(&model, t1 + Duration::from_secs(7));
        assert!(!screen[0].contains("STALE"));
        assert_eq!(table(&screen), [["echo", "0", "2", "0", "2.0", "-", "0"]]);
    }

    #[test]
    fn a_counter_that_went_back_has_no_rate_and_nothing_is_shown_before_an_answer() {
        let t0 = Instant::now();
        let mut model = Model::new("tcp://b:5555", Duration::from_secs(1));
        let screen = draw(&model, t0);
        assert!(
            screen[11].starts_with("asking tcp://b:5555..."),
            "{screen:#?}"
        );
        assert!(table(&screen).is_empty());
        model.answered(t0, stats(100, vec![service("echo", 0, 1, 0, 100)]));
        assert_eq!(model.rows()[0].rate, None);
        // The broker restarted: its counters start again.
        model.answered(
            t0 + Duration::from_secs(1),
            stats(3, vec![service("echo", 0, 1, 0, 3)]),
        );
        assert_eq!(model.rows()[0].rate, None);
        let screen = draw(&model, t0 + Duration::from_secs(1));
        assert!(screen[2].starts_with("req/s -  replies/s -"), "{screen:#?}");
    }
}
