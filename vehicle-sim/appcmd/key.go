package appcmd

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"telematics/pkg/cmdline"
	"telematics/pkg/phone"
	"telematics/pkg/protocol"
	"telematics/pkg/sign"
)

// keyCmd is `vehicle-sim app key create|show|pair|list|share|revoke|remove-user`.
func keyCmd(ctx context.Context, g globals, args []string, env Env) int {
	if len(args) == 0 {
		fmt.Fprintf(env.Stderr, "vehicle-sim app key: need create, show, pair, list, share, revoke or remove-user\n\n%s", usage)
		return 2
	}
	sub, args := args[0], args[1:]
	name := "vehicle-sim app key " + sub
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	fail := func(err error) int {
		msg := err.Error()
		var ae *phone.APIError
		if errors.As(err, &ae) {
			if h := keyHint(sub, ae.Reason); h != "" {
				msg += "\n" + h
			}
		}
		fmt.Fprintf(env.Stderr, "%s: %s\n", name, msg)
		return 1
	}
	usageErr := func(format string, a ...any) int {
		fmt.Fprintf(env.Stderr, "%s: %s\n", name, fmt.Sprintf(format, a...))
		return 2
	}
	// session loads the login session the gateway's key API needs.
	session := func() (*phone.Session, error) {
		s, err := LoadSession(g.session)
		if err != nil {
			return nil, err
		}
		if time.Now().UnixMilli() >= s.ExpiresAtMs {
			return nil, errors.New("the session has expired: log in again")
		}
		return s, nil
	}
	vinArg := func(s string) (string, bool) {
		v := strings.ToUpper(s)
		return v, protocol.ValidVIN(v)
	}

	switch sub {
	case "create":
		force := fs.Bool("force", false, "replace an existing key (the cars it was paired with keep it until it is revoked)")
		if pos, err := cmdline.Interleaved(fs, args); err != nil {
			return 2
		} else if len(pos) != 0 {
			return usageErr("takes no arguments")
		}
		var old *sign.Signer
		var key *sign.Signer
		var err error
		if *force {
			old, _ = phone.LoadKey(g.key)
			key, err = phone.ReplaceKey(g.key)
		} else {
			key, err = phone.CreateKey(g.key)
		}
		if errors.Is(err, phone.ErrKeyExists) {
			return fail(fmt.Errorf("%s already holds a key; replacing it unpairs this phone from its cars. "+
				"Use --force to replace it anyway, or --key FILE for another one", g.key))
		}
		if err != nil {
			return fail(err)
		}
		fmt.Fprintln(env.Stdout, key.KID())
		fmt.Fprintf(env.Stderr, "phone key %s created in %s (mode 0600; its private half never leaves this file)\n", key.KID(), g.key)
		if old != nil && old.KID() != key.KID() {
			fmt.Fprintf(env.Stderr, "it replaces key %s: revoke that one on its cars (vehicle-sim app key revoke VIN %s --totp CODE)\n", old.KID(), old.KID())
		}
		fmt.Fprintln(env.Stderr, "next: vehicle-sim app key pair VIN --totp CODE")
		return 0

	case "show":
		asJSON := fs.Bool("json", false, `print {"key_id", "public_key", "path"}`)
		if pos, err := cmdline.Interleaved(fs, args); err != nil {
			return 2
		} else if len(pos) != 0 {
			return usageErr("takes no arguments")
		}
		key, err := loadKey(g.key)
		if err != nil {
			return fail(err)
		}
		pub, err := sign.EncodePublic(key.Public())
		if err != nil {
			return fail(err)
		}
		if *asJSON {
			return printJSON(env, map[string]string{"key_id": key.KID(), "public_key": pub, "path": g.key})
		}
		fmt.Fprintf(env.Stdout, "key id:     %s\npublic key: %s\nfile:       %s\n", key.KID(), pub, g.key)
		return 0

	case "pair":
		totp := fs.String("totp", "", "TOTP code (key changes need one unless the gateway's policy says otherwise)")
		label := fs.String("label", "", "a name for this phone on the car's key list")
		pos, err := cmdline.Interleaved(fs, args)
		if err != nil {
			return 2
		}
		if len(pos) != 1 {
			return usageErr("need VIN")
		}
		vin, ok := vinArg(pos[0])
		if !ok {
			return usageErr("%q is not a VIN", pos[0])
		}
		key, err := loadKey(g.key)
		if err != nil {
			return fail(err)
		}
		sess, err := session()
		if err != nil {
			return fail(err)
		}
		k, err := phone.PairKey(ctx, sess, key, vin, *label, *totp)
		if err != nil {
			return fail(err)
		}
		fmt.Fprintf(env.Stdout, "key %s is now a key of %s: role %s, channels %s, %s\n",
			k.ID, vin, k.Role, strings.Join(k.Channels, ","), validity(k.NotAfterMs))
		fmt.Fprintln(env.Stdout, "the car can use it over the local link once it has the new whitelist (see: vehicle-sim app key list "+vin+")")
		return 0

	case "list":
		asJSON := fs.Bool("json", false, "print the gateway's answer as JSON")
		pos, err := cmdline.Interleaved(fs, args)
		if err != nil {
			return 2
		}
		if len(pos) > 1 {
			return usageErr("takes at most one VIN")
		}
		sess, err := session()
		if err != nil {
			return fail(err)
		}
		var cars []phone.KeyStatus
		if len(pos) == 1 {
			vin, ok := vinArg(pos[0])
			if !ok {
				return usageErr("%q is not a VIN", pos[0])
			}
			st, err := phone.ListKeys(ctx, sess, vin)
			if err != nil {
				return fail(err)
			}
			if *asJSON {
				return printJSON(env, st)
			}
			cars = []phone.KeyStatus{st}
		} else {
			cars, err = phone.ListAllKeys(ctx, sess)
			var ae *phone.APIError
			if errors.As(err, &ae) && (ae.Reason == protocol.ReasonBadRequest || ae.Status == 404 || ae.Status == 405) {
				return fail(errors.New("the gateway lists keys per car: vehicle-sim app key list VIN"))
			}
			if err != nil {
				return fail(err)
			}
			if *asJSON {
				return printJSON(env, cars)
			}
		}
		mine := ""
		if key, err := phone.LoadKey(g.key); err == nil {
			mine = key.KID()
		}
		printKeyTable(env, cars, mine)
		return 0

	case "share":
		role := fs.String("role", "", "driver or valet")
		until := fs.String("until", "", "the share (and the keys paired under it) ends then, RFC 3339; default never")
		channels := fs.String("channels", protocol.ChannelCloud+","+protocol.ChannelLocal, "where the keys may be used: cloud, local or both")
		totp := fs.String("totp", "", "TOTP code")
		pos, err := cmdline.Interleaved(fs, args)
		if err != nil {
			return 2
		}
		if len(pos) != 2 {
			return usageErr("need VIN and USER")
		}
		vin, ok := vinArg(pos[0])
		if !ok {
			return usageErr("%q is not a VIN", pos[0])
		}
		sh := phone.Share{VIN: vin, User: pos[1], Role: protocol.Role(*role)}
		if !protocol.ValidUser(sh.User) {
			return usageErr("%q is not a user name", sh.User)
		}
		if sh.Role != protocol.RoleDriver && sh.Role != protocol.RoleValet {
			return usageErr("--role must be driver or valet")
		}
		if *until != "" {
			t, err := time.Parse(time.RFC3339, *until)
			if err != nil {
				return usageErr("--until %q is not an RFC 3339 time (e.g. 2030-01-31T18:00:00Z)", *until)
			}
			if !t.After(time.Now()) {
				return usageErr("--until %s is in the past", *until)
			}
			sh.NotAfterMs = t.UnixMilli()
		}
		if sh.Channels, err = parseChannels(*channels); err != nil {
			return usageErr("--channels: %v", err)
		}
		sess, err := session()
		if err != nil {
			return fail(err)
		}
		out, err := phone.ShareKey(ctx, sess, sh, *totp)
		if err != nil {
			return fail(err)
		}
		fmt.Fprintf(env.Stdout, "%s may now use %s: role %s, channels %s, %s\n",
			out.User, out.VIN, out.Role, strings.Join(out.Channels, ","), validity(out.NotAfterMs))
		fmt.Fprintf(env.Stdout, "%s pairs their own phone with: vehicle-sim app key pair %s --totp CODE\n", out.User, out.VIN)
		return 0

	case "revoke":
		totp := fs.String("totp", "", "TOTP code")
		allowLast := fs.Bool("allow-last-owner", false, "allow revoking the car's last owner key (nobody can manage its keys afterwards)")
		keepShare := fs.Bool("keep-share", false, "when this is the last key of a driver or valet, keep their share (they may pair another phone)")
		pos, err := cmdline.Interleaved(fs, args)
		if err != nil {
			return 2
		}
		if len(pos) != 2 {
			return usageErr("need VIN and KEYID")
		}
		vin, ok := vinArg(pos[0])
		if !ok {
			return usageErr("%q is not a VIN", pos[0])
		}
		sess, err := session()
		if err != nil {
			return fail(err)
		}
		rv, err := phone.Revoke(ctx, sess, phone.RevokeRequest{VIN: vin, KeyID: pos[1], TOTP: *totp, AllowLastOwner: *allowLast, KeepShare: *keepShare})
		if err != nil {
			return fail(err)
		}
		fmt.Fprintf(env.Stdout, "key %s revoked on %s in whitelist version %d\n", rv.KeyID, rv.VIN, rv.Version)
		if rv.ShareEnded {
			fmt.Fprintf(env.Stdout, "it was %s's last key: their share of %s ended; they pair again only if you share it again (--keep-share keeps it)\n", rv.User, rv.VIN)
		}
		fmt.Fprintf(env.Stdout, "the car refuses it once it acknowledges version %d (see: vehicle-sim app key list %s)\n", rv.Version, rv.VIN)
		return 0

	case "remove-user":
		totp := fs.String("totp", "", "TOTP code")
		pos, err := cmdline.Interleaved(fs, args)
		if err != nil {
			return 2
		}
		if len(pos) != 2 {
			return usageErr("need VIN and USER")
		}
		vin, ok := vinArg(pos[0])
		if !ok {
			return usageErr("%q is not a VIN", pos[0])
		}
		if !protocol.ValidUser(pos[1]) {
			return usageErr("%q is not a user name", pos[1])
		}
		sess, err := session()
		if err != nil {
			return fail(err)
		}
		rc, err := phone.RemoveUser(ctx, sess, vin, pos[1], *totp)
		if err != nil {
			return fail(err)
		}
		fmt.Fprintf(env.Stdout, "%s removed from %s: %d keys revoked, their share ended\n", rc.User, rc.VIN, rc.KeysChanged)
		if rc.Version != 0 {
			fmt.Fprintf(env.Stdout, "the car refuses their keys once it acknowledges version %d (see: vehicle-sim app key list %s)\n", rc.Version, rc.VIN)
		}
		return 0
	}
	fmt.Fprintf(env.Stderr, "vehicle-sim app key: unknown command %q\n\n%s", sub, usage)
	return 2
}

// parseChannels reads "cloud,local".
func parseChannels(s string) ([]string, error) {
	var out []string
	for _, c := range strings.Split(s, ",") {
		c = strings.TrimSpace(c)
		if c != protocol.ChannelCloud && c != protocol.ChannelLocal {
			return nil, fmt.Errorf("%q is not a channel (cloud, local)", c)
		}
		if !slices.Contains(out, c) {
			out = append(out, c)
		}
	}
	return out, nil
}

// printKeyTable prints each car's whitelist state and keys; mine marks this phone's key.
func printKeyTable(env Env, cars []phone.KeyStatus, mine string) {
	if len(cars) == 0 {
		fmt.Fprintln(env.Stdout, "no cars")
		return
	}
	listedMine := false
	for i, st := range cars {
		if i > 0 {
			fmt.Fprintln(env.Stdout)
		}
		sync := "the car has it"
		switch {
		case st.Version == 0:
			sync = "no whitelist issued yet"
		case !st.InSync():
			sync = fmt.Sprintf("NOT YET ON THE CAR: it has version %d; until it acknowledges %d, the car decides by the older list", st.AckedVersion, st.Version)
		}
		fmt.Fprintf(env.Stdout, "%s  whitelist version %d, acknowledged %d (%s)\n", st.VIN, st.Version, st.AckedVersion, sync)
		if len(st.Keys) == 0 {
			fmt.Fprintln(env.Stdout, "  no keys")
			continue
		}
		tw := tabwriter.NewWriter(env.Stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "  KEY ID\tUSER\tROLE\tCHANNELS\tVALID UNTIL\tREVOKED\tLABEL")
		for _, k := range st.Keys {
			mark := " "
			if k.ID == mine {
				mark, listedMine = "*", true
			}
			fmt.Fprintf(tw, "%s %s\t%s\t%s\t%s\t%s\t%s\t%s\n", mark, k.ID, k.User, k.Role, strings.Join(k.Channels, ","),
				fmtMs(k.NotAfterMs), fmtMs(k.RevokedAtMs), orDefault(k.Label, "-"))
		}
		_ = tw.Flush()
	}
	if listedMine {
		fmt.Fprintln(env.Stdout, "(* this phone's key)")
	}
}

// fmtMs formats unix milliseconds for a table; 0 (none) is "-".
func fmtMs(ms int64) string {
	if ms == 0 {
		return "-"
	}
	return time.UnixMilli(ms).UTC().Format(time.RFC3339)
}

// validity describes a not_after bound.
func validity(notAfterMs int64) string {
	if notAfterMs == 0 {
		return "no expiry"
	}
	return "valid until " + fmtMs(notAfterMs)
}

// keyHint says what to do about a refusal of a key command.
func keyHint(sub string, r protocol.Reason) string {
	switch r {
	case protocol.ReasonForbidden:
		switch sub {
		case "pair":
			return "you hold no role on this car: its owner must share it with you first (vehicle-sim app key share VIN YOU --role …)"
		case "share":
			return "only the car's owner may share it"
		case "revoke":
			return "only the car's owner may revoke its keys; the last owner key only with --allow-last-owner"
		case "remove-user":
			return "only the car's owner removes its drivers and valets; an owner is removed by the admin"
		}
	case protocol.ReasonVehicleUnknown:
		return "the gateway knows no such car"
	case protocol.ReasonKeyUnknown:
		return "the car has no such key: see vehicle-sim app key list VIN"
	}
	return reasonHint(r)
}
