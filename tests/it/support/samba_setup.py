"""The Samba AD DC's test setup, run offline (before the server starts)
with Samba's own Python bindings: see SETUP_PY in samba.rs. Used by the
test harness (tests/it/support/samba.rs) and by bench/revoke.sh.

Arguments: smb.conf, sam.ldb. Environment: FEDGATE_SERVICE_PASSWORD,
FEDGATE_BULK_USERS, FEDGATE_DOMAIN_LOCKOUT, FEDGATE_FAST_LOCKOUT,
FEDGATE_FAST_GROUP.
"""
import os, sys, ldb
from samba.samdb import SamDB
from samba.param import LoadParm
from samba.auth import system_session
from samba.ndr import ndr_unpack, ndr_pack
from samba.dcerpc import security

conf, sam = sys.argv[1:3]
lp = LoadParm()
lp.load(conf)
db = SamDB(url=sam, session_info=system_session(), lp=lp)
base = str(db.get_default_basedn())
env = os.environ
db.transaction_start()
for ou in ("Staff", "Moved", "Bulk"):
    db.add({"dn": "OU=%s,%s" % (ou, base), "objectClass": "organizationalUnit"})
for i in range(int(env["FEDGATE_BULK_USERS"])):
    login = "bulk%04d" % i
    db.add({"dn": "CN=%s,OU=Bulk,%s" % (login, base), "objectClass": "user",
            "sAMAccountName": login, "userPrincipalName": "%s@corp.example.com" % login,
            "userAccountControl": "544"})
db.transaction_commit()

db.newuser("fedgate-svc", env["FEDGATE_SERVICE_PASSWORD"])
svc = db.search(base=base, expression="(sAMAccountName=fedgate-svc)", attrs=["objectSid"])[0]
svc_sid = str(ndr_unpack(security.dom_sid, svc["objectSid"][0]))

# The right the README asks for: List Contents and Read Property on
# CN=Deleted Objects (dsacls ... /G CORP\fedgate-svc:LCRP on Windows).
deleted = "CN=Deleted Objects," + base
res = db.search(base=deleted, scope=ldb.SCOPE_BASE, attrs=["nTSecurityDescriptor"], controls=["show_deleted:1"])
domain_sid = security.dom_sid(db.get_domain_sid())
sddl = ndr_unpack(security.descriptor, res[0]["nTSecurityDescriptor"][0]).as_sddl(domain_sid)
ace = "(A;;LCRP;;;%s)" % svc_sid
cut = sddl.find("S:")
sddl = sddl[:cut] + ace + sddl[cut:] if cut >= 0 else sddl + ace
m = ldb.Message()
m.dn = ldb.Dn(db, deleted)
m["nTSecurityDescriptor"] = ldb.MessageElement(
    ndr_pack(security.descriptor.from_sddl(sddl, domain_sid)), ldb.FLAG_MOD_REPLACE, "nTSecurityDescriptor")
db.modify(m, controls=["show_deleted:1", "sd_flags:1:4"])

# Samba keeps badPwdCount only under a lockout policy.
m = ldb.Message()
m.dn = ldb.Dn(db, base)
m["lockoutThreshold"] = ldb.MessageElement(env["FEDGATE_DOMAIN_LOCKOUT"], ldb.FLAG_MOD_REPLACE, "lockoutThreshold")
db.modify(m)

group = env["FEDGATE_FAST_GROUP"]
db.add({"dn": "CN=%s,CN=Users,%s" % (group, base), "objectClass": "group", "sAMAccountName": group})
minutes = lambda n: str(-n * 60 * 10**7)
db.add({"dn": "CN=fedgate-fast-lockout,CN=Password Settings Container,CN=System," + base,
        "objectClass": "msDS-PasswordSettings",
        "msDS-PasswordSettingsPrecedence": "1",
        "msDS-PasswordReversibleEncryptionEnabled": "FALSE",
        "msDS-PasswordHistoryLength": "0",
        "msDS-PasswordComplexityEnabled": "FALSE",
        "msDS-MinimumPasswordLength": "0",
        "msDS-MinimumPasswordAge": "0",
        "msDS-MaximumPasswordAge": minutes(60 * 24 * 365),
        "msDS-LockoutThreshold": env["FEDGATE_FAST_LOCKOUT"],
        "msDS-LockoutObservationWindow": minutes(30),
        "msDS-LockoutDuration": minutes(30),
        "msDS-PSOAppliesTo": "CN=%s,CN=Users,%s" % (group, base)})
