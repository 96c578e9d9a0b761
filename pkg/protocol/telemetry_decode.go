package protocol

import (
	"encoding/binary"
	"strconv"
	"unicode/utf8"
)

// Telemetry is the gateway's busiest message: every car sends one every few seconds, and
// profiles of the telemetry path showed encoding/json taking nearly all of the decode time
// (the validity pre-pass, reflection, and growing the signals map one insert at a time).
// DecodeTelemetry is a hand-written decoder for the shape cars actually send. It does not
// try to be a JSON decoder: it accepts only what it can decode with certainty to exactly what
// Decode produces, and hands everything else to Decode. Decode therefore stays the
// definition of the message; this file is only a faster way to the same result.

// DecodeTelemetry decodes a telemetry payload exactly as Decode(payload, t) would (same result,
// same error class), faster.
//
// "Exactly" is meant against a zero Telemetry: on success *t equals (reflect.DeepEqual) what
// Decode leaves in a zero Telemetry, whatever *t held before; on failure the error is the one
// Decode returns (every error comes from Decode itself) and *t is unspecified.
func DecodeTelemetry(payload []byte, t *Telemetry) error {
	if len(payload) > MaxPayloadBytes {
		// Decode refuses on the size alone, without parsing and without touching *t.
		return Decode(payload, t)
	}
	if decodeTelemetryFast(payload, t) {
		return nil
	}
	// Decode merges into what *t holds (a non-nil Signals map would collect stale keys), so
	// it gets a zero Telemetry, which is what the fast path's result is defined against.
	*t = Telemetry{}
	return Decode(payload, t)
}

// signalName returns b as a map key, as one of the constant VSS paths when it is one.
func signalName(b []byte) string {
	// A switch on string(b) compares without converting, so only unknown paths allocate.
	switch string(b) {
	case VSSSpeed:
		return VSSSpeed
	case VSSLatitude:
		return VSSLatitude
	case VSSLongitude:
		return VSSLongitude
	case VSSSoC:
		return VSSSoC
	case VSSIsLocked:
		return VSSIsLocked
	case VSSCharging:
		return VSSCharging
	case VSSClimate:
		return VSSClimate
	case VSSTrunkOpen:
		return VSSTrunkOpen
	case VSSRunning:
		return VSSRunning
	case VSSTraveledDistance:
		return VSSTraveledDistance
	}
	return string(b)
}

// Bits of the top-level keys seen so far; a key seen twice is left to encoding/json.
const (
	seenV uint8 = 1 << iota
	seenTs
	seenSeq
	seenSignals
)

// signalKV is one decoded signal, held until the number of signals is known.
type signalKV struct {
	name  string
	value any
}

// decodeTelemetryFast is DecodeTelemetry's single pass over the common shape. It reports
// whether it decoded payload; when it did, *t holds exactly what Decode would have put into a
// zero Telemetry. When it did not (anything it cannot decode with certainty, valid JSON or
// not), *t is untouched and the caller must fall back to Decode.
//
// What it accepts, and why anything more is refused:
//   - a top-level object with keys exactly "v", "ts", "seq", "signals", each at most once:
//     encoding/json matches keys case-insensitively (with Unicode folding) and through
//     escapes, ignores unknown keys and merges a repeated "signals" into one map;
//   - v, ts and seq as JSON integer literals within their Go types (seq not negative): a
//     fraction or exponent, or an overflow, is an error in encoding/json, whose exact
//     text is Decode's to produce;
//   - signals as a JSON object (not null, which leaves Signals nil) whose keys are plain
//     strings and whose values are numbers (float64), true, false, null (nil) or plain
//     strings; a plain string has no escape, no control character and is valid UTF-8, so
//     its bytes are its value (encoding/json replaces invalid UTF-8). Nested objects and
//     arrays are refused, the telemetry contract has none. A repeated signal keeps its
//     last value, as in encoding/json;
//   - JSON whitespace between tokens, and nothing but whitespace after the object.
func decodeTelemetryFast(payload []byte, t *Telemetry) bool {
	s := telemetryScanner{b: payload}
	s.skipWS()
	if !s.consume('{') {
		return false
	}
	var out Telemetry
	var seen uint8
	s.skipWS()
	if !s.consume('}') {
		for {
			key, ok := s.plainString()
			if !ok {
				return false
			}
			s.skipWS()
			if !s.consume(':') {
				return false
			}
			s.skipWS()
			switch string(key) {
			case "v":
				if seen&seenV != 0 {
					return false
				}
				seen |= seenV
				n, err := strconv.ParseInt(string(s.integer()), 10, 64)
				if err != nil || int64(int(n)) != n {
					return false
				}
				out.V = int(n)
			case "ts":
				if seen&seenTs != 0 {
					return false
				}
				seen |= seenTs
				n, err := strconv.ParseInt(string(s.integer()), 10, 64)
				if err != nil {
					return false
				}
				out.TsMs = n
			case "seq":
				if seen&seenSeq != 0 {
					return false
				}
				seen |= seenSeq
				// ParseUint refuses a sign, so "-0" goes to encoding/json too (which refuses it).
				n, err := strconv.ParseUint(string(s.integer()), 10, 64)
				if err != nil {
					return false
				}
				out.Seq = n
			case "signals":
				if seen&seenSignals != 0 {
					return false
				}
				seen |= seenSignals
				if out.Signals, ok = s.signals(); !ok {
					return false
				}
			default:
				return false
			}
			// Whatever follows a value must be a separator: this is also what rejects the
			// rest of a literal the scanners above stopped short of ("01", "1.5", "truex").
			s.skipWS()
			if s.consume(',') {
				s.skipWS()
				continue
			}
			if s.consume('}') {
				break
			}
			return false
		}
	}
	s.skipWS()
	if s.i != len(s.b) {
		return false
	}
	*t = out
	return true
}

// telemetryScanner walks a payload. Its methods never fail by panicking: each checks the
// bounds, and a failure is reported to decodeTelemetryFast, which gives up.
type telemetryScanner struct {
	b []byte
	i int
}

// skipWS skips JSON whitespace: space, tab, newline and carriage return, nothing else.
func (s *telemetryScanner) skipWS() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

// consume skips c if it is the next byte.
func (s *telemetryScanner) consume(c byte) bool {
	if s.i < len(s.b) && s.b[s.i] == c {
		s.i++
		return true
	}
	return false
}

// literal skips word if it comes next.
func (s *telemetryScanner) literal(word string) bool {
	if len(s.b)-s.i >= len(word) && string(s.b[s.i:s.i+len(word)]) == word {
		s.i += len(word)
		return true
	}
	return false
}

// digits skips a run of decimal digits and reports how many there were.
func (s *telemetryScanner) digits() int {
	start := s.i
	for s.i < len(s.b) && s.b[s.i] >= '0' && s.b[s.i] <= '9' {
		s.i++
	}
	return s.i - start
}

// integer scans the JSON integer -?(0|[1-9][0-9]*) and returns it, or an empty slice (which
// strconv refuses) when there is none. A leading zero ends the literal; the caller then finds
// a digit where it expects a separator.
func (s *telemetryScanner) integer() []byte {
	start := s.i
	s.consume('-')
	switch {
	case s.consume('0'):
	case s.digits() > 0:
	default:
		return nil
	}
	return s.b[start:s.i]
}

// number scans a JSON number, -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?, exactly: strconv
// accepts more (hexadecimal, underscores, "inf"), so the grammar is checked here first.
func (s *telemetryScanner) number() ([]byte, bool) {
	start := s.i
	if s.integer() == nil {
		return nil, false
	}
	if s.consume('.') && s.digits() == 0 {
		return nil, false
	}
	if s.consume('e') || s.consume('E') {
		if !s.consume('+') {
			s.consume('-')
		}
		if s.digits() == 0 {
			return nil, false
		}
	}
	return s.b[start:s.i], true
}

// plainString scans a string without escapes or control characters whose bytes are valid
// UTF-8, and returns its bytes without the quotes. Such a string's bytes are its value; for
// any other encoding/json has to unescape or replace.
func (s *telemetryScanner) plainString() ([]byte, bool) {
	if !s.consume('"') {
		return nil, false
	}
	start := s.i
	j := start
	// Signal paths are long and plain: skip them eight bytes at a time while a word holds
	// nothing but printable ASCII other than '"' and '\\'; the bytes loop below does the rest.
	for ; len(s.b)-j >= 8; j += 8 {
		if !plainASCII8(binary.LittleEndian.Uint64(s.b[j:])) {
			break
		}
	}
	ascii := true
	for ; j < len(s.b); j++ {
		switch c := s.b[j]; {
		case c == '"':
			str := s.b[start:j]
			if !ascii && !utf8.Valid(str) {
				return nil, false
			}
			s.i = j + 1
			return str, true
		case c == '\\' || c < 0x20:
			return nil, false
		case c >= utf8.RuneSelf:
			ascii = false
		}
	}
	return nil, false
}

// Word-at-a-time tests on eight bytes (the classic "has zero byte" bit tricks): the expressions
// are nonzero exactly when some byte is zero, respectively below 0x20.
const (
	wordOnes  = 0x0101010101010101
	wordHighs = 0x8080808080808080
)

// plainASCII8 reports whether none of the eight bytes of w ends or escapes a string, is a
// control character or starts a multi-byte UTF-8 sequence.
func plainASCII8(w uint64) bool {
	quote, backslash := w^('"'*wordOnes), w^('\\'*wordOnes)
	special := (w - 0x20*wordOnes) | // some byte < 0x20 (only trusted when all are ASCII, below)
		(quote-wordOnes) & ^quote | // some byte == '"'
		(backslash-wordOnes) & ^backslash // some byte == '\\'
	return (w|special)&wordHighs == 0
}

// signals scans the signals object. The signals are collected first and the map is made with
// their number: encoding/json grows its map from empty, which the profiles showed.
func (s *telemetryScanner) signals() (map[string]any, bool) {
	if !s.consume('{') {
		return nil, false
	}
	var buf [16]signalKV // a car's full set of signals fits; more spill to the heap
	kvs := buf[:0]
	s.skipWS()
	if !s.consume('}') {
		for {
			key, ok := s.plainString()
			if !ok {
				return nil, false
			}
			s.skipWS()
			if !s.consume(':') {
				return nil, false
			}
			s.skipWS()
			if s.i >= len(s.b) {
				return nil, false
			}
			var value any
			switch c := s.b[s.i]; {
			case c == '"':
				str, ok := s.plainString()
				if !ok {
					return nil, false
				}
				value = string(str)
			case c == 't':
				if !s.literal("true") {
					return nil, false
				}
				value = true
			case c == 'f':
				if !s.literal("false") {
					return nil, false
				}
				value = false
			case c == 'n':
				if !s.literal("null") {
					return nil, false
				}
				// encoding/json stores the key with a nil value, which value's zero is.
			case c == '-' || c >= '0' && c <= '9':
				lit, ok := s.number()
				if !ok {
					return nil, false
				}
				// Out of range is an error in encoding/json (not ±Inf), so it is Decode's.
				f, err := strconv.ParseFloat(string(lit), 64)
				if err != nil {
					return nil, false
				}
				value = f
			default:
				return nil, false // objects, arrays, garbage
			}
			kvs = append(kvs, signalKV{signalName(key), value})
			s.skipWS()
			if s.consume(',') {
				s.skipWS()
				continue
			}
			if s.consume('}') {
				break
			}
			return nil, false
		}
	}
	// An empty object gives an empty, non-nil map, as in encoding/json. Inserting in order
	// lets a repeated signal's last value win, as in encoding/json.
	m := make(map[string]any, len(kvs))
	for _, kv := range kvs {
		m[kv.name] = kv.value
	}
	return m, true
}
