//! The first Slack message of each incident in each channel, so that its
//! later transitions go to that message's thread and update it in place
//! (tocsin_outbound::slack). Only a bot token can thread: an incoming
//! webhook answers no `ts`.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::incident::IncidentId;
use crate::ports::BackendError;

/// Where Slack put a message: the channel id Slack answered (`C0123ABCD`,
/// which `chat.update` needs, where the job only names `#checkout`) and the
/// message's `ts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlackThread {
    pub channel_id: String,
    pub ts: String,
}

/// Remembers the first message of an incident per configured channel.
#[async_trait]
pub trait SlackThreads: Send + Sync {
    /// Records the first message of `incident` in `channel` (the channel as
    /// configured). The first one recorded stays: a redelivered trigger
    /// never moves the thread.
    async fn remember(&self, incident: &IncidentId, channel: &str, thread: &SlackThread) -> Result<(), BackendError>;

    /// The first message of `incident` in `channel`, if one was recorded.
    async fn thread(&self, incident: &IncidentId, channel: &str) -> Result<Option<SlackThread>, BackendError>;
}

/// The in-memory adapter: the reference for the contract, and the store of
/// a notifier that has no other.
#[derive(Debug, Default)]
pub struct MemorySlackThreads {
    threads: Mutex<HashMap<(IncidentId, String), SlackThread>>,
}

#[async_trait]
impl SlackThreads for MemorySlackThreads {
    async fn remember(&self, incident: &IncidentId, channel: &str, thread: &SlackThread) -> Result<(), BackendError> {
        let mut threads = self.threads.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        threads
            .entry((incident.clone(), channel.to_owned()))
            .or_insert_with(|| thread.clone());
        Ok(())
    }

    async fn thread(&self, incident: &IncidentId, channel: &str) -> Result<Option<SlackThread>, BackendError> {
        let threads = self.threads.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(threads.get(&(incident.clone(), channel.to_owned())).cloned())
    }
}

#[cfg(all(test, feature = "contract"))]
mod tests {
    #[tokio::test]
    async fn memory_threads_pass_the_contract() {
        crate::contract::slack_threads(&super::MemorySlackThreads::default()).await;
    }
}
