package protocol

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

// Fuzz targets for the wire messages every component decodes from strangers (cars, apps,
// phones on the local link). FuzzDecodeTelemetry is in telemetry_decode_test.go.

const fuzzVIN = "1HGCM82633A004352"

// wireMessages are real messages of each type the components exchange, one per kind; the
// fuzzers' seeds. kind indexes wireKinds.
func wireMessages() [][]byte {
	cmd := Command{V: 1, ID: "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b", VIN: fuzzVIN, Action: "unlock",
		KeyID: "k1", User: "alice", IssuedAtMs: 1_800_000_000_000, ExpiresAtMs: 1_800_000_010_000, Nonce: "n1"}
	doc, _ := json.Marshal(cmd)
	env := Envelope{Doc: EncodeB64(doc), Sig: EncodeB64(bytes.Repeat([]byte{7}, 64)), KID: "k1"}
	msgs := []any{
		cmd,
		AppRequest{V: 1, Command: env, TOTP: "123456"},
		VehicleCommand{V: 1, Command: env, Grant: env},
		Result{V: 1, ID: cmd.ID, Status: ResultExecuted, State: map[string]any{"locked": false, "odometer_km": 1234.5}, TsMs: 1_800_000_000_100},
		Reply{V: 1, ID: cmd.ID, Status: ReplyRejected, Reason: ReasonForbidden, VIN: fuzzVIN, Action: "unlock", TsMs: 1},
		KeysAck{V: 1, VIN: fuzzVIN, Version: 7, TsMs: 1_800_000_000_000},
		VehicleEvent{V: 1, VIN: fuzzVIN, Seq: 3, Kind: EventLocalCommand, User: "alice", CmdID: cmd.ID, Action: "unlock", Status: "executed", KeyID: "k1", TsMs: 1},
		VehicleStatus{V: 1, Status: StatusOffline, TsMs: 1_800_000_000_000},
		CarToken{V: 1, VIN: fuzzVIN, JTI: "0f8fad5b-d9cb-469f-a165-70867728950e", IssuedAtMs: 1_800_000_000_000},
		Whitelist{V: 1, VIN: fuzzVIN, Version: 2, IssuedAtMs: 1, Keys: []WhitelistKey{{ID: "k1", Pub: "MFkw", User: "alice", Role: RoleOwner, Channels: []string{ChannelCloud, ChannelLocal}}}, Trust: []string{"MFkw"}},
		Grant{V: 1, CmdSHA256: strings.Repeat("ab", 32), VIN: fuzzVIN, User: "alice", Factors: []string{"key", "totp"}, ExpiresAtMs: 1_800_000_010_000},
		Challenge{V: 1, VIN: fuzzVIN, Nonce: "n1", ExpiresAtMs: 1_800_000_010_000},
		LocalRequest{V: 1, Command: env},
		Credentials{VIN: fuzzVIN, ClientID: fuzzVIN, Username: fuzzVIN, Token: "a.b.c", GatewayKey: "MFkw"},
	}
	out := make([][]byte, len(msgs))
	for i, m := range msgs {
		out[i], _ = json.Marshal(m)
	}
	return out
}

// wireKinds makes a fresh value of each message type, in the order of wireMessages.
var wireKinds = []func() any{
	func() any { return new(Command) },
	func() any { return new(AppRequest) },
	func() any { return new(VehicleCommand) },
	func() any { return new(Result) },
	func() any { return new(Reply) },
	func() any { return new(KeysAck) },
	func() any { return new(VehicleEvent) },
	func() any { return new(VehicleStatus) },
	func() any { return new(CarToken) },
	func() any { return new(Whitelist) },
	func() any { return new(Grant) },
	func() any { return new(Challenge) },
	func() any { return new(LocalRequest) },
	func() any { return new(Credentials) },
}

// FuzzDecodeMessage decodes arbitrary bytes as each wire message type with Decode, the bounded
// decoder every receiver uses: it never panics, refuses with bad_request only, and what it
// accepts survives a round trip (encode, decode, encode gives the same bytes). A command that
// passes Check still passes it after the round trip.
func FuzzDecodeMessage(f *testing.F) {
	for i, b := range wireMessages() {
		f.Add(uint8(i), b)
	}
	f.Add(uint8(0), []byte(`{"v":1,"params":{"a":[1,2,{"b":null}]},"id":"\u00e9"}`))
	f.Add(uint8(3), []byte(`{"state":{"x":1e308,"y":-0,"z":"\ud800"}}`))
	f.Add(uint8(9), []byte(`{"keys":[{},{},{}],"version":18446744073709551615}`))
	f.Fuzz(func(t *testing.T, kind uint8, payload []byte) {
		mk := wireKinds[int(kind)%len(wireKinds)]
		v := mk()
		if err := Decode(payload, v); err != nil {
			if ReasonOf(err) != ReasonBadRequest {
				t.Fatalf("refusal %v, want bad_request", err)
			}
			return
		}
		once, err := json.Marshal(v)
		if err != nil {
			t.Fatalf("re-encode %T: %v", v, err)
		}
		v2 := mk()
		if err := Decode(once, v2); err != nil {
			// A value decoded from at most MaxPayloadBytes may re-encode a little larger
			// (escapes of invalid UTF-8); only that may refuse.
			if len(once) > MaxPayloadBytes {
				return
			}
			t.Fatalf("re-decode %T of %q: %v", v, once, err)
		}
		twice, _ := json.Marshal(v2)
		if !bytes.Equal(once, twice) {
			t.Fatalf("round trip of %T:\n%s\n%s", v, once, twice)
		}
		if c, ok := v.(*Command); ok && c.Check() == nil {
			if err := v2.(*Command).Check(); err != nil {
				t.Fatalf("checked command fails Check after a round trip: %v", err)
			}
			if !ValidID(c.ID) || !ValidVIN(c.VIN) || !c.Action.Valid() || c.ExpiresAtMs < c.IssuedAtMs {
				t.Fatalf("Check accepted %+v", c)
			}
		}
	})
}

// FuzzEnvelopeDoc decodes an envelope's doc (base64url of the exact signed bytes) as every
// verifier does before checking a signature: no panic, a refusal is bad_request, and the bytes
// are no longer than the text allows.
func FuzzEnvelopeDoc(f *testing.F) {
	for _, b := range wireMessages() {
		f.Add(EncodeB64(b))
	}
	f.Add("")
	f.Add("e30")
	f.Add("e31")
	f.Add("e3\n0")
	f.Add("====")
	f.Fuzz(func(t *testing.T, doc string) {
		b, err := Envelope{Doc: doc}.DocBytes()
		if err != nil {
			if ReasonOf(err) != ReasonBadRequest {
				t.Fatalf("refusal %v, want bad_request", err)
			}
			return
		}
		if len(b) > len(doc)*3/4 {
			t.Fatalf("%d bytes from %d characters", len(b), len(doc))
		}
		// The decoder skips CR and LF, so a doc of line breaks alone decodes to nothing.
		if len(b) == 0 {
			return
		}
		again, err := Envelope{Doc: EncodeB64(b)}.DocBytes()
		if err != nil || !bytes.Equal(again, b) {
			t.Fatalf("round trip of the doc bytes: %v", err)
		}
		if _, err := (Envelope{Doc: doc}).DocSHA256(); err != nil {
			t.Fatalf("DocSHA256 refuses a doc DocBytes accepts: %v", err)
		}
	})
}

// FuzzParseTopic parses the topics the gateway receives messages on (a client chooses them):
// an accepted topic names a valid VIN or user name and is exactly the topic the builders make
// from what was parsed.
func FuzzParseTopic(f *testing.F) {
	for _, s := range []string{
		VehicleTopic(fuzzVIN, SuffixResult), VehicleTopic(fuzzVIN, SuffixKeysAck), AppTopic("alice", "cmd"),
		"v/" + fuzzVIN, "app/gateway/cmd", "v//x", "app/../cmd", "v/_tokens/" + fuzzVIN, "app/alice/",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, topic string) {
		if vin, suffix, ok := ParseVehicleTopic(topic); ok {
			if !ValidVIN(vin) || VehicleTopic(vin, suffix) != topic {
				t.Fatalf("ParseVehicleTopic(%q) = %q, %q", topic, vin, suffix)
			}
		}
		if user, suffix, ok := ParseAppTopic(topic); ok {
			if !ValidUser(user) || strings.ContainsAny(user, "/+#") || AppTopic(user, suffix) != topic {
				t.Fatalf("ParseAppTopic(%q) = %q, %q", topic, user, suffix)
			}
		}
	})
}
