FROM python:3.11-slim
WORKDIR /app
COPY . /app
RUN pip install --no-cache-dir '.[postgres,redis,rabbitmq]'
ENV POSTDESK_CONFIG=/etc/postdesk/postdesk.toml
EXPOSE 2525
ENTRYPOINT ["postdesk"]
CMD ["serve"]
