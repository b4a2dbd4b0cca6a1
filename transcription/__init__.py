"""Offline speech recognition for recorded hearings.

- :mod:`transcription.engine`: the :class:`SpeechEngine` / :class:`Recognizer` interface;
- :mod:`transcription.vosk_engine`: the Vosk implementation (one model, many recognizers);
- :mod:`transcription.stream`: :class:`ChannelStream`, one seat's audio → partials and finals
  aligned to capture time;
- :mod:`transcription.transcript`: the transcript model (segments, clerk revisions, notes,
  recesses) and its JSON form;
- :mod:`transcription.exports`: SRT, WebVTT, plain text, JSON and the paged court layout;
- :mod:`transcription.cli`: ``courthub transcribe``.

Knows nothing of MQTT or HTTP: the hub feeds PCM in and stores what comes out.
"""
