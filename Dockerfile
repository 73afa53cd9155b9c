# postdesk: one image for every process (smtp, imap, worker, scheduler, migrate).
# Build: docker build -t postdesk:latest .   (docs/production.md)
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    POSTDESK_CONFIG=/etc/postdesk/postdesk.toml \
    POSTDESK_DATA_DIR=/var/lib/postdesk

WORKDIR /app

# Dependencies in their own layer: only pyproject.toml is copied first, so editing the
# code does not reinstall them.
COPY pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
extras = p['optional-dependencies']; \
print('\n'.join(p['dependencies'] + extras['postgres'] + extras['redis'] + extras['rabbitmq']))" \
    > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt

COPY . .
RUN pip install --no-deps . \
 && useradd --system --uid 10001 --home-dir /var/lib/postdesk --shell /usr/sbin/nologin postdesk \
 && mkdir -p /var/lib/postdesk /etc/postdesk \
 && chown postdesk:postdesk /var/lib/postdesk \
 && chmod 0700 /var/lib/postdesk

USER postdesk
# Port 2525 inside (a non-root user cannot bind 25); publish it as 25.
EXPOSE 2525

# Docker reserves exit status 2, so "unreachable" (2) and "degraded" (1) both become 1.
HEALTHCHECK --interval=30s --timeout=15s --start-period=30s --retries=3 \
    CMD postdesk status > /dev/null || exit 1

ENTRYPOINT ["postdesk"]
CMD ["serve"]
