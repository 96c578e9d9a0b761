package protocol

import (
	"encoding/binary"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

// carTelemetry is what a simulated car publishes (vehicle.Car.NextTelemetry: State.Signals
// with the position, rounded as a car reports it), marshalled as the car marshals it. It is
// built here because pkg/vehicle imports this package.
func carTelemetry(tb testing.TB) []byte {
	tb.Helper()
	raw, err := json.Marshal(Telemetry{V: Version, TsMs: 1_763_870_000_123, Seq: 4242, Signals: map[string]any{
		VSSSpeed: 87.5, VSSSoC: 63.2, VSSIsLocked: true, VSSCharging: false, VSSClimate: true,
		VSSTrunkOpen: false, VSSRunning: true, VSSTraveledDistance: 12345.6,
		VSSLatitude: 48.137154, VSSLongitude: 11.576124,
	}})
	if err != nil {
		tb.Fatal(err)
	}
	return raw
}

// typicalTelemetry is the example of docs/PROTOCOL.md's shape, keys in their natural order.
const typicalTelemetry = `{"v":1,"ts":1763870000123,"seq":42,"signals":{"Vehicle.Speed":52.3,"Vehicle.CurrentLocation.Latitude":48.137,"Vehicle.CurrentLocation.Longitude":11.575,"Vehicle.Powertrain.TractionBattery.StateOfCharge.Current":77.5,"Vehicle.Cabin.Door.Row1.DriverSide.IsLocked":true,"Vehicle.Powertrain.TractionBattery.Charging.IsCharging":false,"Vehicle.Cabin.HVAC.IsAirConditioningActive":false}}`

// telemetryCase is one payload of the differential table. fast says which path must decode
// it, so the table also shows that the common shapes do not silently fall back; wantErr
// pins what encoding/json does with it, so a case keeps testing what its name says.
type telemetryCase struct {
	name    string
	payload string
	fast    bool
	wantErr bool
}

func telemetryCases(tb testing.TB) []telemetryCase {
	tb.Helper()
	const sig = `"signals":{"Vehicle.Speed":1.5}`
	oversized := `{"v":1,"ts":1,` + sig + `}` + strings.Repeat(" ", MaxPayloadBytes)
	atLimit := `{"v":1,"ts":1,` + sig + `}`
	atLimit += strings.Repeat(" ", MaxPayloadBytes-len(atLimit))
	return []telemetryCase{
		// The shapes cars send: fast.
		{"typical", typicalTelemetry, true, false},
		{"car", string(carTelemetry(tb)), true, false},
		{"reordered keys", `{"signals":{"Vehicle.Speed":3},"seq":9,"v":1,"ts":5}`, true, false},
		{"whitespace", " \t\r\n{ \"v\" : 1 ,\n\t\"ts\"\r:\t2 , \"seq\" :3,\"signals\" : { \"a\" : true , \"b\"\n:\nnull } } \n\t\r", true, false},
		{"empty object", `{}`, true, false},
		{"no signals", `{"v":1,"ts":2,"seq":3}`, true, false},
		{"empty signals", `{"v":1,"ts":2,"signals":{}}`, true, false},
		{"empty signals with space", `{"v":1,"ts":2,"signals":{ }}`, true, false},
		{"null signal value", `{"v":1,"ts":2,"signals":{"Vehicle.Speed":null}}`, true, false},
		{"string values", `{"v":1,"ts":2,"signals":{"Vehicle.Gear":"D","Vehicle.VIN":"WVWZZZ1JZXW000001","e":""}}`, true, false},
		{"unicode", "{\"v\":1,\"ts\":2,\"signals\":{\"Fahrzeug.Türschloß\":\"zu 🔒\",\"日本\":\"車\",\"x\":\"\u2028\u00e9\"}}", true, false},
		{"literal replacement char", "{\"signals\":{\"a\":\"\xef\xbf\xbd\"}}", true, false},
		{"duplicate signal", `{"signals":{"a":1,"b":2,"a":"last"}}`, true, false},
		{"number forms", `{"signals":{"a":0,"b":-0,"c":-0.0e-0,"d":1E+5,"e":1e-5,"f":123.456e7,"g":-9007199254740993,"h":0.1000000000000000055511151231257827}}`, true, false},
		{"tiny number", `{"signals":{"a":1e-400}}`, true, false},
		{"integer limits", `{"v":-9223372036854775808,"ts":9223372036854775807,"seq":18446744073709551615}`, true, false},
		{"negative zero ts", `{"v":-0,"ts":-0,"seq":0}`, true, false},
		{"at size limit", atLimit, true, false},

		// Valid JSON the fast path leaves to encoding/json.
		{"escape in value", `{"signals":{"a":"x\"y\u00e9\n"}}`, false, false},
		{"escape in signal key", `{"signals":{"a\u002eb":1}}`, false, false},
		{"escaped top-level key", `{"\u0076":2,"ts":3}`, false, false},
		{"invalid utf-8 value", "{\"signals\":{\"a\":\"\xff\xfe\"}}", false, false},
		{"invalid utf-8 key", "{\"signals\":{\"\xc3\":1}}", false, false},
		{"surrogate utf-8", "{\"signals\":{\"a\":\"\xed\xa0\x80\"}}", false, false},
		{"nested object", `{"signals":{"a":{"b":1}}}`, false, false},
		{"nested array", `{"signals":{"a":[1,2]}}`, false, false},
		{"unknown key", `{"v":1,"ts":2,"vin":"WVWZZZ1JZXW000001","signals":{}}`, false, false},
		{"uppercase key", `{"V":1,"TS":2,"Seq":3,"Signals":{"a":1}}`, false, false},
		{"folded key", `{"ſeq":3,"ſignals":{"a":1}}`, false, false},
		{"duplicate v", `{"v":1,"v":2}`, false, false},
		{"duplicate signals", `{"signals":{"a":1},"signals":{"b":2}}`, false, false},
		{"null signals", `{"v":1,"signals":null}`, false, false},
		{"null v", `{"v":null,"ts":1}`, false, false},
		{"null payload", `null`, false, false},

		// Malformed or mistyped: encoding/json's error, through the fallback.
		{"trailing garbage", typicalTelemetry + `x`, false, true},
		{"second object", `{}{}`, false, true},
		{"truncated", typicalTelemetry[:len(typicalTelemetry)/2], false, true},
		{"truncated literal", `{"signals":{"a":tru`, false, true},
		{"truncated number", `{"ts":1`, false, true},
		{"empty", ``, false, true},
		{"whitespace only", " \n", false, true},
		{"array", `[1,2]`, false, true},
		{"string", `"v"`, false, true},
		{"number", `1`, false, true},
		{"bom", "\ufeff{}", false, true},
		{"vertical tab", "{\v}", false, true},
		{"missing colon", `{"v" 1}`, false, true},
		{"missing comma", `{"v":1 "ts":2}`, false, true},
		{"trailing comma", `{"v":1,}`, false, true},
		{"trailing comma in signals", `{"signals":{"a":1,}}`, false, true},
		{"control char", "{\"signals\":{\"a\":\"x\ty\"}}", false, true},
		{"bad literal", `{"signals":{"a":truex}}`, false, true},
		{"short literal", `{"signals":{"a":nul}}`, false, true},
		{"NaN", `{"signals":{"a":NaN}}`, false, true},
		{"leading zero", `{"signals":{"a":01}}`, false, true},
		{"leading plus", `{"signals":{"a":+1}}`, false, true},
		{"bare dot", `{"signals":{"a":.5}}`, false, true},
		{"dot without digits", `{"signals":{"a":1.}}`, false, true},
		{"exponent without digits", `{"signals":{"a":1e+}}`, false, true},
		{"lone minus", `{"signals":{"a":-}}`, false, true},
		{"hex", `{"signals":{"a":0x10}}`, false, true},
		{"huge number", `{"signals":{"a":1e400}}`, false, true},
		{"huge ts", `{"ts":9223372036854775808}`, false, true},
		{"huge seq", `{"seq":18446744073709551616}`, false, true},
		{"negative seq", `{"seq":-1}`, false, true},
		{"negative zero seq", `{"seq":-0}`, false, true},
		{"fraction ts", `{"ts":1763870000123.5}`, false, true},
		{"zero fraction ts", `{"ts":1.0}`, false, true},
		{"exponent v", `{"v":1e0}`, false, true},
		{"leading zero ts", `{"ts":01}`, false, true},
		{"string v", `{"v":"1"}`, false, true},
		{"bool ts", `{"ts":true}`, false, true},
		{"signals not an object", `{"signals":[]}`, false, true},
		{"signals a string", `{"signals":"x"}`, false, true},
		{"oversized", oversized, false, true},
	}
}

// sameAsDecode requires DecodeTelemetry to do what Decode does with a zero Telemetry: the same
// error (text included, since every error comes from Decode) or an equal result, starting
// from a Telemetry that is not zero, so that the fast path has to replace every field.
func sameAsDecode(t *testing.T, payload []byte) {
	t.Helper()
	var want Telemetry
	wantErr := Decode(payload, &want)
	got := Telemetry{V: 7, TsMs: 7, Seq: 7, Signals: map[string]any{"stale": 7.0}}
	gotErr := DecodeTelemetry(payload, &got)
	switch {
	case (wantErr == nil) != (gotErr == nil):
		t.Fatalf("payload %.300q: DecodeTelemetry error %v, Decode error %v", payload, gotErr, wantErr)
	case wantErr != nil:
		if gotErr.Error() != wantErr.Error() || ReasonOf(gotErr) != ReasonOf(wantErr) {
			t.Fatalf("payload %.300q: DecodeTelemetry error %v, Decode error %v", payload, gotErr, wantErr)
		}
	case !reflect.DeepEqual(got, want):
		t.Fatalf("payload %.300q:\nDecodeTelemetry %#v\nDecode          %#v", payload, got, want)
	}
}

func TestDecodeTelemetry(t *testing.T) {
	for _, tc := range telemetryCases(t) {
		t.Run(tc.name, func(t *testing.T) {
			payload := []byte(tc.payload)
			var want Telemetry
			if err := Decode(payload, &want); (err != nil) != tc.wantErr {
				t.Fatalf("Decode error %v, case expects error %v", err, tc.wantErr)
			}
			// DecodeTelemetry takes the fast path only within the size limit.
			var fast Telemetry
			if ok := len(payload) <= MaxPayloadBytes && decodeTelemetryFast(payload, &fast); ok != tc.fast {
				t.Fatalf("fast path taken %v, want %v", ok, tc.fast)
			} else if !ok && !reflect.DeepEqual(fast, Telemetry{}) {
				t.Fatalf("fast path gave up but wrote %#v", fast)
			}
			sameAsDecode(t, payload)
		})
	}
}

// TestDecodeTelemetryValues spells out a few results, so that the table is not only
// checking DecodeTelemetry against itself should both paths ever share a bug.
func TestDecodeTelemetryValues(t *testing.T) {
	var tm Telemetry
	if err := DecodeTelemetry([]byte(typicalTelemetry), &tm); err != nil {
		t.Fatal(err)
	}
	want := Telemetry{V: 1, TsMs: 1763870000123, Seq: 42, Signals: map[string]any{
		VSSSpeed: 52.3, VSSLatitude: 48.137, VSSLongitude: 11.575, VSSSoC: 77.5,
		VSSIsLocked: true, VSSCharging: false, VSSClimate: false,
	}}
	if !reflect.DeepEqual(tm, want) {
		t.Fatalf("got %#v\nwant %#v", tm, want)
	}

	if err := DecodeTelemetry([]byte(`{"signals":{}}`), &tm); err != nil {
		t.Fatal(err)
	}
	if tm.Signals == nil || len(tm.Signals) != 0 || tm.V != 0 || tm.TsMs != 0 || tm.Seq != 0 {
		t.Fatalf("empty signals: got %#v, want zero fields and an empty non-nil map", tm)
	}

	if err := DecodeTelemetry([]byte(`{"signals":{"a":null,"b":"x","a":2}}`), &tm); err != nil {
		t.Fatal(err)
	}
	if v, ok := tm.Signals["a"]; !ok || v != 2.0 || tm.Signals["b"] != "x" || len(tm.Signals) != 2 {
		t.Fatalf("got %#v", tm.Signals)
	}

	err := DecodeTelemetry([]byte(`{"ts":1.5}`), &tm)
	if ReasonOf(err) != ReasonBadRequest {
		t.Fatalf("fraction in ts: error %v, want bad_request", err)
	}
}

// TestPlainASCII8 checks the word-at-a-time test against the byte-at-a-time rule, for every
// byte value at every position of an otherwise plain word and for pairs of special bytes.
func TestPlainASCII8(t *testing.T) {
	plain := func(c byte) bool { return c >= 0x20 && c < 0x80 && c != '"' && c != '\\' }
	check := func(word []byte) {
		want := true
		for _, c := range word {
			want = want && plain(c)
		}
		if got := plainASCII8(binary.LittleEndian.Uint64(word)); got != want {
			t.Fatalf("plainASCII8(%q) = %v, want %v", word, got, want)
		}
	}
	for p := range 8 {
		for c := range 256 {
			word := []byte("abcdefgh")
			word[p] = byte(c)
			check(word)
			for q := range 8 {
				for _, d := range []byte{0x00, 0x1f, 0x20, '"', '\\', 0x7f, 0x80, 0xff} {
					word2 := append([]byte(nil), word...)
					word2[q] = d
					check(word2)
				}
			}
		}
	}
}

func FuzzDecodeTelemetry(f *testing.F) {
	for _, tc := range telemetryCases(f) {
		f.Add([]byte(tc.payload))
	}
	f.Fuzz(func(t *testing.T, payload []byte) {
		sameAsDecode(t, payload)
	})
}
