//! Audio that the upstream did not count in tokens: how much of it there was, for the
//! `per_audio_minute` and `per_1m_characters` prices.
//!
//! - Transcriptions and translations answered with `usage: {"type": "tokens", ...}` are
//!   priced by their tokens like any answer; with `usage: {"type": "duration",
//!   "seconds"}`, or a `verbose_json` answer's `duration`, by the minute. A `text`, `srt`
//!   or `vtt` answer from an upstream that reports neither cannot be measured here: it is
//!   recorded at cost 0 with a warning (ask for `json` to be billed exactly).
//! - Speech is priced by the characters of its `input`.

use bytes::Bytes;
use serde::Deserialize;

use crate::exchange::{Endpoint, Payload};

/// Audio measured for pricing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct AudioUse {
    pub milliseconds: u64,
    pub characters: u64,
}

#[derive(Deserialize)]
struct Answer {
    #[serde(default)]
    usage: Option<UsageView>,
    #[serde(default)]
    duration: Option<f64>,
}

#[derive(Deserialize)]
struct UsageView {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    seconds: Option<f64>,
}

fn ms(seconds: f64) -> u64 {
    if seconds.is_finite() && seconds > 0.0 {
        (seconds * 1000.0).round().min(u64::MAX as f64) as u64
    } else {
        0
    }
}

/// The audio of a successful answer to `endpoint` that is priced without tokens; `None`
/// when its tokens price it (or it is not audio).
pub(crate) fn measure(
    endpoint: Endpoint,
    answer: Option<&Bytes>,
    payload: &Payload,
) -> Option<AudioUse> {
    match endpoint {
        Endpoint::AudioSpeech => {
            let input = payload.field::<String>("input")?.ok()?;
            Some(AudioUse {
                milliseconds: 0,
                characters: input.chars().count() as u64,
            })
        }
        Endpoint::AudioTranscriptions | Endpoint::AudioTranslations => {
            let parsed = answer.and_then(|b| serde_json::from_slice::<Answer>(b).ok());
            let Some(a) = parsed else {
                tracing::warn!(
                    endpoint = endpoint.label(),
                    "an audio answer without usage or duration (response_format text, srt or vtt?): recorded at cost 0"
                );
                return Some(AudioUse::default());
            };
            if a.usage.as_ref().and_then(|u| u.kind.as_deref()) == Some("tokens") {
                return None;
            }
            let seconds = a
                .usage
                .and_then(|u| u.seconds)
                .or(a.duration)
                .unwrap_or(0.0);
            Some(AudioUse {
                milliseconds: ms(seconds),
                characters: 0,
            })
        }
        _ => None,
    }
}

#[allow(clippy::unwrap_used, reason = "tests")]
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audio_is_measured_by_duration_characters_or_left_to_tokens() {
        let empty = Payload::parse(Bytes::from_static(b"{}")).unwrap();
        let m = |body: &'static str| {
            measure(
                Endpoint::AudioTranscriptions,
                Some(&Bytes::from_static(body.as_bytes())),
                &empty,
            )
        };
        assert_eq!(
            m(r#"{"text":"x","usage":{"type":"duration","seconds":90}}"#)
                .unwrap()
                .milliseconds,
            90_000
        );
        assert_eq!(
            m(r#"{"text":"x","duration":1.25}"#).unwrap().milliseconds,
            1250
        );
        assert_eq!(
            m(r#"{"text":"x","usage":{"type":"tokens","input_tokens":3,"output_tokens":1}}"#),
            None
        );
        let speech = Payload::parse(Bytes::from("{\"input\":\"h\u{e9}llo\"}")).unwrap();
        assert_eq!(
            measure(Endpoint::AudioSpeech, None, &speech)
                .unwrap()
                .characters,
            5
        );
    }
}
