"""The volume layer: LUKS2 headers and keyslots, AES-XTS, the drive device."""
