package cmdline

import (
	"bytes"
	"testing"
	"time"
)

func TestPlural(t *testing.T) {
	tests := []struct {
		n          int
		noun, want string
	}{
		{1, "vehicle", "1 vehicle"},
		{2, "vehicle", "2 vehicles"},
		{0, "car", "0 cars"},
		{3, "entry", "3 entries"},
		{2, "key", "2 keys"},
		{2, "address", "2 addresses"},
		{2, "batch", "2 batches"},
	}
	for _, tc := range tests {
		if got := Plural(tc.n, tc.noun); got != tc.want {
			t.Errorf("Plural(%d, %q) = %q, want %q", tc.n, tc.noun, got, tc.want)
		}
	}
}

func TestTime(t *testing.T) {
	if Time(0) != "-" {
		t.Errorf("Time(0) = %q", Time(0))
	}
	ms := time.Date(2026, 12, 2, 7, 15, 4, 0, time.UTC).UnixMilli()
	tests := []struct {
		loc  *time.Location
		want string
	}{
		{time.UTC, "2026-12-02 07:15:04 UTC"},
		{time.FixedZone("CET", 3600), "2026-12-02 08:15:04 UTC+1"},
		{time.FixedZone("IST", 5*3600+1800), "2026-12-02 12:45:04 UTC+5:30"},
		{time.FixedZone("BRT", -3*3600), "2026-12-02 04:15:04 UTC-3"},
	}
	for _, tc := range tests {
		if got := formatTime(time.UnixMilli(ms).In(tc.loc)); got != tc.want {
			t.Errorf("%s: %q, want %q", tc.loc, got, tc.want)
		}
	}
}

func TestTable(t *testing.T) {
	var b bytes.Buffer
	tab := NewTable(&b)
	tab.Row("VIN", "STATUS")
	tab.Row("WVW00000000000001", "online\tnow")
	if err := tab.Flush(); err != nil {
		t.Fatal(err)
	}
	want := "VIN                STATUS\nWVW00000000000001  online now\n"
	if b.String() != want {
		t.Errorf("got\n%q\nwant\n%q", b.String(), want)
	}
}
