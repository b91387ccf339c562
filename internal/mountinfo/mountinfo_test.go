package mountinfo

import "testing"

func TestUnescape(t *testing.T) {
	tests := []struct{ in, want string }{
		{"/var/lib/microvms", "/var/lib/microvms"},
		{`/mnt/with\040space`, "/mnt/with space"},
		{`/mnt/tab\011x\134y`, "/mnt/tab\tx\\y"},
		{`/mnt/short\04`, `/mnt/short\04`},
		{`/mnt/not\999octal\011`, "/mnt/not\\999octal\t"},
	}
	for _, tt := range tests {
		if got := Unescape(tt.in); got != tt.want {
			t.Errorf("Unescape(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestPoints(t *testing.T) {
	points, err := Points()
	if err != nil {
		t.Fatal(err)
	}
	if ok, _ := IsPoint("/"); !ok || len(points) == 0 {
		t.Errorf("/ is not among the mount points %q", points)
	}
	if ok, _ := IsPoint("/no/such/mount"); ok {
		t.Error("IsPoint reports a mount that is not there")
	}
}
