package sign_test

import (
	"encoding/json"
	"testing"

	"telematics/pkg/protocol"
	"telematics/pkg/sign"
)

// benchCommand is a phone-signed unlock as an app sends it, and the key that signed it.
func benchCommand(b *testing.B) (*sign.Signer, protocol.Envelope, []byte) {
	b.Helper()
	phone, err := sign.Generate()
	if err != nil {
		b.Fatal(err)
	}
	cmd := protocol.Command{V: protocol.Version, ID: "0190f3a2-7c1e-7d4b-9a55-3f1c2b4d5e6f",
		VIN: "WVWZZZ1JZXW000001", Action: protocol.ActionUnlock, KeyID: phone.KID(), User: "alice",
		IssuedAtMs: 1_700_000_000_000, ExpiresAtMs: 1_700_000_010_000}
	env, err := phone.Seal(cmd)
	if err != nil {
		b.Fatal(err)
	}
	req, err := json.Marshal(protocol.AppRequest{V: protocol.Version, Command: env, TOTP: "123456"})
	if err != nil {
		b.Fatal(err)
	}
	return phone, env, req
}

// BenchmarkVerifyCommand is what the gateway (and the car) pay to open a phone-signed
// command: the signature check (sign.Verify: base64, SHA-256, ECDSA P-256) and the decode of
// the document (protocol.Decode). "app-request" adds the decode of the MQTT payload around
// it, as the gateway receives it on app/{user}/cmd.
func BenchmarkVerifyCommand(b *testing.B) {
	phone, env, req := benchCommand(b)
	b.Run("envelope", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			doc, err := sign.Verify(env, phone.Public())
			if err != nil {
				b.Fatal(err)
			}
			var cmd protocol.Command
			if err := protocol.Decode(doc, &cmd); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("app-request", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(req)))
		for b.Loop() {
			var ar protocol.AppRequest
			if err := protocol.Decode(req, &ar); err != nil {
				b.Fatal(err)
			}
			doc, err := sign.Verify(ar.Command, phone.Public())
			if err != nil {
				b.Fatal(err)
			}
			var cmd protocol.Command
			if err := protocol.Decode(doc, &cmd); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("decode-only", func(b *testing.B) {
		doc, _ := env.DocBytes()
		b.ReportAllocs()
		for b.Loop() {
			var cmd protocol.Command
			if err := protocol.Decode(doc, &cmd); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkSign is the gateway's cost of one grant signature (one per accepted command).
func BenchmarkSign(b *testing.B) {
	gw, err := sign.Generate()
	if err != nil {
		b.Fatal(err)
	}
	grant := protocol.Grant{V: protocol.Version, CmdSHA256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
		VIN: "WVWZZZ1JZXW000001", User: "alice", Factors: []string{"token", "key", "totp"}, ExpiresAtMs: 1_700_000_010_000}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := gw.Seal(grant); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDecodePublic is the parse of a base64url DER public key, as whitelist.VerifyCommand
// does for the signing key of every command.
func BenchmarkDecodePublic(b *testing.B) {
	phone, _, _ := benchCommand(b)
	enc, err := sign.EncodePublic(phone.Public())
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := sign.DecodePublic(enc); err != nil {
			b.Fatal(err)
		}
	}
}
