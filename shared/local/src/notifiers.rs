//! Notifiers of the local stack: the outbox, a JSON-lines file of every
//! message sent (with a line on the console), as the only delivery (email
//! and SMS) or as the record of a real one (Slack).

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use tocsin_core::event::{ServiceId, Severity};
use tocsin_core::incident::{IncidentId, TransitionKind};
use tocsin_core::notify::{Channel, Message, NotificationJob, Notifier, NotifyError, Receipt};

/// One line of the outbox: one message delivered to one recipient.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboxRecord {
    pub channel: Channel,
    pub to: String,
    pub incident_id: IncidentId,
    pub transition: TransitionKind,
    pub job_id: String,
    pub service: ServiceId,
    pub service_name: String,
    pub severity: Severity,
    pub summary: String,
    pub delivered_at: DateTime<Utc>,
    /// The provider's id of the message (a Slack ts), where there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    pub message: Message,
}

/// Appends one JSON object per delivery to a file (`<data>/outbox.jsonl`),
/// and prints a short line per delivery unless told not to.
pub struct Outbox {
    path: PathBuf,
    // Held while a whole line is written, so concurrent deliveries never
    // interleave their bytes.
    file: Mutex<File>,
    print: bool,
}

impl fmt::Debug for Outbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outbox")
            .field("path", &self.path)
            .field("print", &self.print)
            .finish_non_exhaustive()
    }
}

impl Outbox {
    /// Opens (or creates) the file for appending, and its folder if missing.
    /// With `print`, each delivery also prints a short line on stdout.
    pub fn open(path: impl Into<PathBuf>, print: bool) -> io::Result<Outbox> {
        let path = path.into();
        if let Some(folder) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(folder)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        Ok(Outbox {
            path,
            file: Mutex::new(file),
            print,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends the record of one delivery as one line.
    pub async fn record(
        &self,
        job: &NotificationJob,
        message: &Message,
        reference: Option<&str>,
    ) -> io::Result<OutboxRecord> {
        let incident = &job.incident;
        let record = OutboxRecord {
            channel: job.channel,
            to: job.to.clone(),
            incident_id: incident.id.clone(),
            transition: job.transition,
            job_id: job.id.clone(),
            service: incident.service.clone(),
            service_name: job.service_name.clone(),
            severity: incident.severity,
            summary: incident.summary.clone(),
            delivered_at: Utc::now(),
            reference: reference.map(str::to_owned),
            message: message.clone(),
        };
        let mut line = serde_json::to_vec(&record)?;
        line.push(b'\n');
        {
            let mut file = self.file.lock().await;
            // One short append to a local file: not worth a hop to the
            // blocking pool.
            file.write_all(&line)?;
            file.flush()?;
        }
        if self.print {
            println!("{}", console_line(&record));
        }
        Ok(record)
    }

    /// Every record in an outbox file, oldest first.
    pub fn read(path: &Path) -> io::Result<Vec<OutboxRecord>> {
        let file = match File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut records = Vec::new();
        for line in BufReader::new(file).lines() {
            let line = line?;
            if !line.trim().is_empty() {
                records.push(serde_json::from_str(&line)?);
            }
        }
        Ok(records)
    }
}

/// `📣 email → oncall@example.com  [triggered] inc_… Checkout: summary`.
/// Control characters are dropped: an alert must not drive the terminal.
fn console_line(record: &OutboxRecord) -> String {
    let summary: String = record
        .summary
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let summary = summary.split_whitespace().collect::<Vec<_>>().join(" ");
    let summary = match summary.char_indices().nth(80) {
        Some((cut, _)) => format!("{}…", &summary[..cut]),
        None => summary,
    };
    let service: String = record.service_name.chars().filter(|c| !c.is_control()).collect();
    // A terminal is a log: phone numbers show their last digits only (the
    // outbox file keeps them whole).
    let to = tocsin_core::timeline::recipient_for_display(record.channel, &record.to);
    format!(
        "📣 {} → {}  [{}] {} {}: {}",
        record.channel, to, record.transition, record.incident_id, service, summary
    )
}

/// Delivers a channel by writing to the outbox only: the local stand-in for
/// SES and SNS (and for Slack when no Slack is configured).
#[derive(Debug)]
pub struct OutboxNotifier {
    pub channel: Channel,
    pub outbox: Arc<Outbox>,
}

impl OutboxNotifier {
    pub fn new(channel: Channel, outbox: Arc<Outbox>) -> Self {
        OutboxNotifier { channel, outbox }
    }
}

#[async_trait]
impl Notifier for OutboxNotifier {
    fn channel(&self) -> Channel {
        self.channel
    }

    async fn deliver(&self, job: &NotificationJob, message: &Message) -> Result<Receipt, NotifyError> {
        if message.channel() != self.channel {
            return Err(NotifyError::wrong_message(message, self.channel));
        }
        self.outbox
            .record(job, message, None)
            .await
            .map_err(|e| NotifyError::Transient {
                reason: "could not append to the outbox".to_owned(),
                retry_after_secs: None,
                source: Some(Box::new(e)),
            })?;
        // No reference: the outbox line is found by the job id, which names
        // the recipient, and a receipt ends up in the incident's timeline.
        Ok(Receipt::sent(None))
    }
}

/// Delivers through a real notifier (Slack), then records the delivery in
/// the outbox, so that `outbox.jsonl` lists every message whichever way it
/// left.
pub struct RecordedNotifier {
    inner: Arc<dyn Notifier>,
    outbox: Arc<Outbox>,
}

impl RecordedNotifier {
    pub fn new(inner: Arc<dyn Notifier>, outbox: Arc<Outbox>) -> Self {
        RecordedNotifier { inner, outbox }
    }
}

#[async_trait]
impl Notifier for RecordedNotifier {
    fn channel(&self) -> Channel {
        self.inner.channel()
    }

    async fn deliver(&self, job: &NotificationJob, message: &Message) -> Result<Receipt, NotifyError> {
        let receipt = self.inner.deliver(job, message).await?;
        // The message is out: failing now would only send it twice.
        if let Err(error) = self.outbox.record(job, message, receipt.reference.as_deref()).await {
            tracing::warn!(%error, "delivered, but could not append to the outbox");
        }
        Ok(receipt)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use serde_json::Value;
    use tocsin_core::contract::sample_job as job;
    use tocsin_core::render::{render, RenderContext};

    use super::*;

    fn outbox(dir: &tempfile::TempDir) -> Arc<Outbox> {
        Arc::new(Outbox::open(dir.path().join("data/outbox.jsonl"), false).expect("outbox"))
    }

    /// A notifier that succeeds with a reference, or fails, and counts calls.
    struct Scripted {
        fail: bool,
        calls: AtomicUsize,
    }

    #[async_trait]
    impl Notifier for Scripted {
        fn channel(&self) -> Channel {
            Channel::Slack
        }

        async fn deliver(&self, _job: &NotificationJob, _message: &Message) -> Result<Receipt, NotifyError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if self.fail {
                Err(NotifyError::Transient {
                    reason: "slack is down".to_owned(),
                    retry_after_secs: Some(3),
                    source: None,
                })
            } else {
                Ok(Receipt::sent(Some("1718000000.000100".to_owned())))
            }
        }
    }

    #[tokio::test]
    async fn a_recorded_delivery_is_in_the_outbox_with_its_reference_and_a_failed_one_is_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let outbox = outbox(&dir);
        let job = job(Channel::Slack, "Disk full");
        let message = render(&job, &RenderContext::default());

        let failing = RecordedNotifier::new(
            Arc::new(Scripted {
                fail: true,
                calls: AtomicUsize::new(0),
            }),
            outbox.clone(),
        );
        assert!(matches!(
            failing.deliver(&job, &message).await,
            Err(NotifyError::Transient {
                retry_after_secs: Some(3),
                ..
            })
        ));
        assert!(Outbox::read(outbox.path()).expect("outbox").is_empty());

        let working = RecordedNotifier::new(
            Arc::new(Scripted {
                fail: false,
                calls: AtomicUsize::new(0),
            }),
            outbox.clone(),
        );
        assert_eq!(working.channel(), Channel::Slack);
        let receipt = working.deliver(&job, &message).await.expect("delivered");
        assert_eq!(receipt.reference.as_deref(), Some("1718000000.000100"));
        let records = Outbox::read(outbox.path()).expect("outbox");
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].reference.as_deref(), Some("1718000000.000100"));
        assert_eq!(records[0].message, message);
    }

    #[tokio::test]
    async fn the_outbox_notifier_records_the_job_and_answers_no_reference() {
        let dir = tempfile::tempdir().expect("tempdir");
        let outbox = outbox(&dir);
        let notifier = OutboxNotifier::new(Channel::Email, outbox.clone());
        let job = job(Channel::Email, "Disk full");
        let message = render(&job, &RenderContext::default());

        let receipt = notifier.deliver(&job, &message).await.expect("delivered");
        // The job id names the recipient, and receipts go to the timeline.
        assert_eq!(receipt.reference, None);

        let line = std::fs::read_to_string(outbox.path()).expect("outbox");
        let value: Value = serde_json::from_str(line.trim_end()).expect("one JSON line");
        for field in [
            "channel",
            "to",
            "incident_id",
            "transition",
            "job_id",
            "service",
            "severity",
            "delivered_at",
            "message",
        ] {
            assert!(value.get(field).is_some(), "{field} missing in {value}");
        }
        assert_eq!(value["channel"], "email");
        assert_eq!(value["to"], "oncall@example.com");
        assert_eq!(value["transition"], "triggered");
        assert_eq!(value["severity"], "critical");
        assert_eq!(value["message"]["kind"], "email");

        let sms = render(&self::job(Channel::Sms, "x"), &RenderContext::default());
        assert!(matches!(
            notifier.deliver(&job, &sms).await,
            Err(NotifyError::Permanent { .. })
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_appends_are_whole_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let outbox = outbox(&dir);
        let mut tasks = Vec::new();
        for task in 0..16 {
            let outbox = outbox.clone();
            tasks.push(tokio::spawn(async move {
                // Large lines, so that a torn write would show.
                let job = job(Channel::Email, &format!("task {task} {}", "x".repeat(20_000)));
                let message = render(&job, &RenderContext::default());
                for _ in 0..25 {
                    outbox.record(&job, &message, None).await.expect("recorded");
                }
            }));
        }
        for task in tasks {
            task.await.expect("task");
        }

        let text = std::fs::read_to_string(outbox.path()).expect("outbox");
        assert!(text.ends_with('\n'));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 16 * 25);
        for line in lines {
            let record: OutboxRecord = serde_json::from_str(line).expect("a whole JSON line");
            assert!(record.summary.starts_with("task "));
        }
        assert_eq!(Outbox::read(outbox.path()).expect("read").len(), 16 * 25);
    }

    #[test]
    fn the_console_line_is_short_and_inert() {
        let job = job(Channel::Email, "Disk\u{1b}[2J full\non db-1");
        let record = OutboxRecord {
            channel: job.channel,
            to: job.to.clone(),
            incident_id: job.incident.id.clone(),
            transition: job.transition,
            job_id: job.id.clone(),
            service: job.incident.service.clone(),
            service_name: job.service_name.clone(),
            severity: job.incident.severity,
            summary: job.incident.summary.clone(),
            delivered_at: job.planned_at,
            reference: None,
            message: render(&job, &RenderContext::default()),
        };
        assert_eq!(
            console_line(&record),
            "📣 email → oncall@example.com  [triggered] inc_3f9a1c07d2e84b6a90c1 Checkout: Disk [2J full on db-1"
        );
    }
}
