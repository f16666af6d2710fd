//! Hub: the map key → channel (a key is the user, plus any key parameters
//! of the tab's request), and the lifecycle of each entry (refcount of
//! tabs, grace timer, generation check). Owns that map and nothing else; it
//! never parses HTTP, never reads upstream bytes and never encodes frames.

use dashmap::DashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use tokio_util::sync::CancellationToken;

use crate::config::HubConfig;
use crate::credential::Credential;
use crate::events::channel::{Channel, Lag, Signals, Subject};
use crate::events::resume::ResumeKey;
use crate::upstream::{End, Upstream};

/// Why a tab could not subscribe.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HubError {
    /// The user already holds `max_tabs_per_user` tabs.
    #[error("too many tabs for this user (limit {0})")]
    TooManyTabs(usize),
    /// The gateway holds `max_total_tabs` tabs.
    #[error("too many tabs in total (limit {0})")]
    Full(usize),
    /// The hub is shutting down.
    #[error("shutting down")]
    ShuttingDown,
}

struct Entry {
    channel: Arc<Channel>,
    /// Stops this channel's upstream task.
    cancel: CancellationToken,
    subs: usize,
    /// Bumped on every subscribe/unsubscribe: a grace timer only closes the
    /// entry if nothing happened since it was armed.
    generation: u64,
}

struct Inner {
    entries: DashMap<String, Entry>,
    settings: HubConfig,
    /// What every channel's tabs get at gaps and outages, encoded once.
    signals: Arc<Signals>,
    /// Seals upstream positions into every channel's ids.
    resume: Option<Arc<ResumeKey>>,
    upstream: Arc<Upstream>,
    shutdown: CancellationToken,
    upstreams_started: AtomicU64,
    total_tabs: AtomicUsize,
    /// The two limits a config reload may change while running; read on
    /// every subscribe, so they apply to the next tab (open tabs stay).
    max_tabs_per_user: AtomicUsize,
    max_total_tabs: AtomicUsize,
}

/// Shared handle to the hub.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

/// One tab's hold on its user's channel. Dropping it (the tab's stream ended)
/// releases the tab's credentials and, for the last tab, arms the grace timer.
pub struct Subscription {
    channel: Arc<Channel>,
    cred_key: u64,
    hub: Hub,
}

impl Subscription {
    /// The user's channel.
    pub fn channel(&self) -> &Arc<Channel> {
        &self.channel
    }

    /// Whether the credential this tab brought was revoked since the
    /// channel's revocation count was `seen`; updates `seen`. One atomic
    /// load unless something was revoked.
    pub fn credential_revoked(&self, seen: &mut u64) -> bool {
        let now = self.channel.revocations();
        if now == *seen {
            return false;
        }
        *seen = now;
        self.channel.is_revoked(self.cred_key)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.channel.remove_credential(self.cred_key);
        self.hub.release(&self.channel);
    }
}

impl Hub {
    /// A hub whose channels run `upstream`.
    /// `hub.max_total_tabs = 0` is resolved here (and on reload), from the
    /// open-file limit.
    pub fn new(settings: HubConfig, upstream: Upstream) -> Hub {
        // A key of this process alone: resume works within it.
        let key = ResumeKey::random().ok().map(Arc::new);
        Self::with_resume(settings, upstream, key)
    }

    /// [`Hub::new`] sealing positions with `resume` (shared by the
    /// instances of a deployment), or with none (plain ids).
    pub fn with_resume(
        settings: HubConfig,
        upstream: Upstream,
        resume: Option<Arc<ResumeKey>>,
    ) -> Hub {
        let max_total_tabs = total_tabs_limit(settings.max_total_tabs);
        Hub {
            inner: Arc::new(Inner {
                entries: DashMap::new(),
                max_tabs_per_user: AtomicUsize::new(settings.max_tabs_per_user),
                max_total_tabs: AtomicUsize::new(max_total_tabs),
                signals: Arc::new(Signals::new(&settings)),
                resume,
                settings,
                upstream: Arc::new(upstream),
                shutdown: CancellationToken::new(),
                upstreams_started: AtomicU64::new(0),
                total_tabs: AtomicUsize::new(0),
            }),
        }
    }

    /// Add a tab for `who` (a user, or a [`Subject`] with its key and
    /// stream path), presenting `cred` (a credential, or a whole `Cookie`
    /// header) to the backend. The first tab of a key creates the channel
    /// and starts its upstream; later tabs (any session, any device) share it.
    pub fn subscribe(
        &self,
        who: impl Into<Subject>,
        cred: impl Into<Credential>,
    ) -> Result<Subscription, HubError> {
        let (subject, cred) = (who.into(), cred.into());
        if self.inner.shutdown.is_cancelled() {
            return Err(HubError::ShuttingDown);
        }
        let total_limit = self.inner.max_total_tabs.load(Ordering::Relaxed);
        self.inner
            .total_tabs
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < total_limit).then_some(n + 1)
            })
            .map_err(|_| HubError::Full(total_limit))?;
        let limit = self.inner.max_tabs_per_user.load(Ordering::Relaxed);
        let mut entry = self
            .inner
            .entries
            .entry(subject.key.clone())
            .or_insert_with(|| self.open(&subject));
        if entry.channel.is_closed() {
            // Logged out, and its upstream task has not removed it yet: a tab
            // attaching now would wait on a dead channel. Start afresh; the
            // old channel's tabs and task only ever touch their own channel.
            entry.cancel.cancel();
            *entry = self.open(&subject);
        }
        if entry.subs >= limit {
            drop(entry);
            self.inner.total_tabs.fetch_sub(1, Ordering::AcqRel);
            return Err(HubError::TooManyTabs(limit));
        }
        entry.subs += 1;
        entry.generation += 1;
        let channel = entry.channel.clone();
        // Credentials are added while the entry is locked so the upstream
        // task never sees a channel with a subscriber but no credential.
        let cred_key = channel.add_credential(cred);
        drop(entry);
        Ok(Subscription {
            channel,
            cred_key,
            hub: self.clone(),
        })
    }

    /// Create an entry and start its upstream. Runs under the map's shard lock.
    fn open(&self, subject: &Subject) -> Entry {
        let s = &self.inner.settings;
        let channel = Channel::for_subject(
            subject,
            s.ring_size,
            Lag::new(s),
            self.inner.signals.clone(),
            self.inner.resume.clone(),
        );
        let cancel = self.inner.shutdown.child_token();
        self.inner.upstreams_started.fetch_add(1, Ordering::Relaxed);
        let upstream = self.inner.upstream.clone();
        let weak = Arc::downgrade(&self.inner);
        let (ch, c) = (channel.clone(), cancel.clone());
        tokio::spawn(async move {
            if upstream.run(ch.clone(), c).await == End::LoggedOut {
                // The tabs were told `logout`; forget the channel so the next
                // login starts afresh. Only this very channel is removed.
                if let Some(inner) = weak.upgrade() {
                    inner
                        .entries
                        .remove_if(ch.key(), |_, e| Arc::ptr_eq(&e.channel, &ch));
                }
            }
        });
        Entry {
            channel,
            cancel,
            subs: 0,
            generation: 0,
        }
    }

    fn release(&self, channel: &Arc<Channel>) {
        self.inner.total_tabs.fetch_sub(1, Ordering::AcqRel);
        let key = channel.key();
        let armed = match self.inner.entries.get_mut(key) {
            Some(mut e) if Arc::ptr_eq(&e.channel, channel) => {
                e.subs = e.subs.saturating_sub(1);
                e.generation += 1;
                (e.subs == 0).then_some(e.generation)
            }
            // The channel was already dropped (logout); nothing to count.
            _ => None,
        };
        let Some(generation) = armed else { return };
        let grace = self.inner.settings.grace;
        let weak = Arc::downgrade(&self.inner);
        let key = key.to_string();
        let close = move |inner: &Inner| {
            if let Some((_, e)) = inner
                .entries
                .remove_if(&key, |_, e| e.subs == 0 && e.generation == generation)
            {
                e.cancel.cancel();
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) if !grace.is_zero() => {
                rt.spawn(async move {
                    tokio::time::sleep(grace).await;
                    if let Some(inner) = weak.upgrade() {
                        close(&inner);
                    }
                });
            }
            _ => close(&self.inner),
        }
    }

    /// The key positions in ids are sealed with.
    pub fn resume_key(&self) -> Option<&Arc<ResumeKey>> {
        self.inner.resume.as_ref()
    }

    /// Users with a channel (including channels in grace).
    pub fn channels(&self) -> usize {
        self.inner.entries.len()
    }

    /// Channels with no tab, waiting out their grace.
    pub fn channels_in_grace(&self) -> usize {
        self.inner.entries.iter().filter(|e| e.subs == 0).count()
    }

    /// Tabs of channel `key` (a user, keyed by identity alone) subscribed.
    pub fn tabs(&self, key: &str) -> usize {
        self.inner.entries.get(key).map_or(0, |e| e.subs)
    }

    /// Tabs of all users.
    pub fn total_tabs(&self) -> usize {
        self.inner.total_tabs.load(Ordering::Acquire)
    }

    /// The channel of `key` (a user, keyed by identity alone), if one exists.
    pub fn channel(&self, key: &str) -> Option<Arc<Channel>> {
        self.inner.entries.get(key).map(|e| e.channel.clone())
    }

    /// The keys of every channel (tests: which streams exist).
    pub fn keys(&self) -> Vec<String> {
        self.inner.entries.iter().map(|e| e.key().clone()).collect()
    }

    /// Replace the tab limits (config reload). Tabs already open above a
    /// lowered limit stay; only new tabs are refused.
    pub fn set_limits(&self, max_tabs_per_user: usize, max_total_tabs: usize) {
        self.inner
            .max_tabs_per_user
            .store(max_tabs_per_user, Ordering::Relaxed);
        self.inner
            .max_total_tabs
            .store(total_tabs_limit(max_total_tabs), Ordering::Relaxed);
    }

    /// Upstream tasks started since the hub was created.
    pub fn upstreams_started(&self) -> u64 {
        self.inner.upstreams_started.load(Ordering::Relaxed)
    }

    /// Stop every upstream; refuse new tabs. Tab streams are ended by their
    /// own shutdown signal, not by the hub.
    pub fn shutdown(&self) {
        self.inner.shutdown.cancel();
        self.inner.entries.clear();
    }
}

/// Half the soft open-file limit (read from `/proc/self/limits`), so tabs
/// cannot starve upstream and proxy connections of descriptors; 10 000 where
/// the limit cannot be read.
/// `hub.max_total_tabs` as configured, `0` meaning "derive it".
fn total_tabs_limit(configured: usize) -> usize {
    match configured {
        0 => default_total_tabs(),
        n => n,
    }
}

fn default_total_tabs() -> usize {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|soft| soft.parse::<usize>().ok())
        })
        .map_or(10_000, |soft| (soft / 2).max(64))
}

#[cfg(test)]
mod tests;
